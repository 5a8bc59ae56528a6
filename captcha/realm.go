package captcha

import (
	"slices"
	"sync"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Builtin CAPTCHA answers expire after this long, and at most this many
// are kept.
const (
	puzzleTTL = 10 * time.Minute
	maxPuzzle = 10000
)

// Realm is the lockout state of one realm: it outlives `caddy reload`
// (a config that names the same realm shares it), and the admin API finds
// it by name.
type Realm struct {
	Lockout *Lockout
	Puzzles *PuzzleStore

	// regs are the lockout settings of the configs using the realm, oldest
	// first; the newest is in force. A config that fails to load is
	// cleaned up too, and removing its registration puts the running
	// config's settings back.
	mu   sync.Mutex
	regs []registration
}

type registration struct {
	owner   any
	s       Settings
	storage certmagic.Storage
	db      tokenstore.LockoutStore
	logger  *zap.Logger
}

// Destruct stops the realm's storage goroutine once no config uses it.
func (r *Realm) Destruct() error {
	r.Lockout.Close()
	return nil
}

// apply puts the newest registration in force. r.mu must be held.
func (r *Realm) apply() {
	if len(r.regs) == 0 {
		return
	}
	reg := r.regs[len(r.regs)-1]
	r.Lockout.Configure(reg.s, reg.logger)
	r.Lockout.SetStorage(reg.storage)
	r.Lockout.SetLockoutStore(reg.db)
}

var realms = caddy.NewUsagePool()

// Acquire returns the realm's state, creating it (and loading its
// challenges and bans from storage) if no loaded config has it yet, and
// puts owner's settings in force. Pair each Acquire with a Release by the
// same owner.
//
// db is the realm's token store if it keeps lockout state (the SQL
// stores), else nil: with one, counts, challenges and bans are kept in its
// database; without, challenges and bans are kept in storage (Caddy's).
// A realm keeps the kind it was created with across reloads.
func Acquire(name string, owner any, s Settings, storage certmagic.Storage, db tokenstore.LockoutStore, logger *zap.Logger) (*Realm, error) {
	v, _, err := realms.LoadOrNew(name, func() (caddy.Destructor, error) {
		l := NewLockout(s, logger, time.Now)
		switch {
		case db != nil:
			l.PersistDB(db)
		case storage != nil:
			l.Persist(name, storage)
		}
		return &Realm{Lockout: l, Puzzles: NewPuzzleStore(puzzleTTL, maxPuzzle, time.Now)}, nil
	})
	if err != nil {
		return nil, err
	}
	r := v.(*Realm)
	r.mu.Lock()
	r.regs = append(r.regs, registration{owner: owner, s: s, storage: storage, db: db, logger: logger})
	r.apply()
	r.mu.Unlock()
	return r, nil
}

// Release gives back the realm owner took with Acquire.
func Release(name string, owner any) error {
	if r, ok := Lookup(name); ok {
		r.mu.Lock()
		r.regs = slices.DeleteFunc(r.regs, func(reg registration) bool { return reg.owner == owner })
		r.apply()
		r.mu.Unlock()
	}
	_, err := realms.Delete(name)
	return err
}

// Lookup returns the live realm called name, if a loaded config has it.
// For the admin API and tests.
func Lookup(name string) (*Realm, bool) {
	var found *Realm
	realms.Range(func(key, value any) bool {
		if key == name {
			found = value.(*Realm)
			return false
		}
		return true
	})
	return found, found != nil
}
