package captcha

import (
	"time"

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
}

// Destruct stops the realm's storage goroutine once no config uses it.
func (r *Realm) Destruct() error {
	r.Lockout.Close()
	return nil
}

var realms = caddy.NewUsagePool()

// Acquire returns the realm's state, creating it (and loading its
// challenges and bans from storage) if no loaded config has it yet, and
// applies s. Pair each Acquire with a Release.
func Acquire(name string, s Settings, storage certmagic.Storage, logger *zap.Logger) (*Realm, error) {
	v, loaded, err := realms.LoadOrNew(name, func() (caddy.Destructor, error) {
		l := NewLockout(s, logger, time.Now)
		if storage != nil {
			l.Persist(name, storage)
		}
		return &Realm{Lockout: l, Puzzles: NewPuzzleStore(puzzleTTL, maxPuzzle, time.Now)}, nil
	})
	if err != nil {
		return nil, err
	}
	r := v.(*Realm)
	if loaded {
		r.Lockout.Configure(s, logger)
		r.Lockout.SetStorage(storage)
	}
	return r, nil
}

// Release gives back a realm taken with Acquire.
func Release(name string) error {
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
