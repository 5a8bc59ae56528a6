package captcha

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"net/netip"
	"path"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// How often a lockout rereads the shared storage (for challenges and bans
// started or cleared by other servers) and forgets what has lapsed.
const defaultSyncEvery = 2 * time.Second

// storageTimeout bounds one storage operation.
const storageTimeout = 10 * time.Second

// persister keeps a lockout's challenges and bans in Caddy's storage. All
// storage I/O happens on its own goroutine: a request only queues what
// changed, it never waits for the storage.
type persister struct {
	l      *Lockout
	prefix string // api_token_auth/<realm>/

	storage atomic.Pointer[storageRef]
	ops     chan storageOp
	// pending counts queued operations. While some are queued, storage
	// lags memory, so the sync does not compare them.
	pending atomic.Int64

	syncEvery time.Duration
	stop      chan struct{}
	done      chan struct{}
	stopOnce  sync.Once
}

type storageRef struct{ certmagic.Storage }

// storageOp writes (data != nil) or deletes a key.
type storageOp struct {
	key  string
	data []byte
}

// storedChallenge is a challenge's form in storage: with its key, so that
// any server reading it files it where its own requests will look.
type storedChallenge struct {
	Key string `json:"key"`
	Challenge
}

func (p *persister) challengeKey(lockoutKey string) string {
	sum := sha256.Sum256([]byte(lockoutKey))
	return p.prefix + "challenges/" + hex.EncodeToString(sum[:]) + ".json"
}

func (p *persister) banKey(ip netip.Addr) string {
	sum := sha256.Sum256(ip.AsSlice())
	return p.prefix + "bans/" + hex.EncodeToString(sum[:]) + ".json"
}

func storeChallenge(key string, c Challenge) func(*persister) storageOp {
	return func(p *persister) storageOp {
		data, _ := json.Marshal(storedChallenge{Key: key, Challenge: c})
		return storageOp{key: p.challengeKey(key), data: data}
	}
}

func deleteChallenge(key string) func(*persister) storageOp {
	return func(p *persister) storageOp { return storageOp{key: p.challengeKey(key)} }
}

func storeBan(b Ban) func(*persister) storageOp {
	return func(p *persister) storageOp {
		data, _ := json.Marshal(b)
		return storageOp{key: p.banKey(b.IP), data: data}
	}
}

func deleteBan(ip netip.Addr) func(*persister) storageOp {
	return func(p *persister) storageOp { return storageOp{key: p.banKey(ip)} }
}

// enqueue queues a storage write. The caller holds l.mu. The queue is
// large; if it is ever full the write is dropped and logged rather than
// making a request wait for the storage.
func (p *persister) enqueue(op func(*persister) storageOp) {
	p.pending.Add(1)
	select {
	case p.ops <- op(p):
	default:
		p.pending.Add(-1)
		p.l.logger.Load().Error("lockout storage queue full; a challenge or ban change is kept in memory only")
	}
}

// Persist makes l keep its challenges and bans in storage under
// api_token_auth/<realm>/, loading what is there now, and starts the
// goroutine that writes changes and rereads the storage.
func (l *Lockout) Persist(realm string, storage certmagic.Storage) {
	p := &persister{
		l:         l,
		prefix:    path.Join("api_token_auth", realm) + "/",
		ops:       make(chan storageOp, 4096),
		syncEvery: defaultSyncEvery,
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	p.storage.Store(&storageRef{storage})
	l.mu.Lock()
	l.persist = p
	l.mu.Unlock()
	p.sync()
	go p.loop()
}

// SetStorage switches to the storage of a reloaded config.
func (l *Lockout) SetStorage(storage certmagic.Storage) {
	if p := l.persist; p != nil && storage != nil {
		p.storage.Store(&storageRef{storage})
	}
}

// SetLockoutStore switches a lockout kept in a database (PersistDB) to
// the store of a reloaded config.
func (l *Lockout) SetLockoutStore(store tokenstore.LockoutStore) {
	if d := l.db; d != nil && store != nil {
		d.setStore(store)
	}
}

// Close writes what is queued and stops the storage goroutine.
func (l *Lockout) Close() {
	if d := l.db; d != nil {
		d.close()
	}
	if p := l.persist; p != nil {
		p.stopOnce.Do(func() {
			close(p.stop)
			<-p.done
		})
	}
}

func (p *persister) loop() {
	defer close(p.done)
	ticker := time.NewTicker(p.syncEvery)
	defer ticker.Stop()
	for {
		select {
		case op := <-p.ops:
			p.apply(op)
		case <-ticker.C:
			p.l.expire()
			p.sync()
		case <-p.stop:
			for {
				select {
				case op := <-p.ops:
					p.apply(op)
				default:
					return
				}
			}
		}
	}
}

func (p *persister) apply(op storageOp) {
	defer p.pending.Add(-1)
	ctx, cancel := context.WithTimeout(context.Background(), storageTimeout)
	defer cancel()
	storage := p.storage.Load()
	var err error
	if op.data != nil {
		err = storage.Store(ctx, op.key, op.data)
	} else if err = storage.Delete(ctx, op.key); errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	if err != nil {
		p.l.logger.Load().Error("writing lockout state to storage", zap.String("key", op.key), zap.Error(err))
	}
}

// sync makes memory agree with storage for what other servers changed:
// challenges and bans they started are added, those they cleared (stored
// here before, gone from storage now) are dropped. It compares nothing
// while this server's own writes are queued.
func (p *persister) sync() {
	if p.pending.Load() > 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), storageTimeout)
	defer cancel()
	storage := p.storage.Load()
	challenges, err1 := loadAll[storedChallenge](ctx, storage, p.prefix+"challenges")
	bans, err2 := loadAll[Ban](ctx, storage, p.prefix+"bans")
	if err := errors.Join(err1, err2); err != nil {
		p.l.logger.Load().Error("reading lockout state from storage", zap.Error(err))
		return
	}

	l := p.l
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if p.pending.Load() > 0 {
		return
	}
	inStorage := make(map[string]bool, len(challenges))
	for _, sc := range challenges {
		inStorage[sc.Key] = true
		if !sc.activeAt(now) {
			p.enqueue(deleteChallenge(sc.Key)) // lapsed; this server saw it end
			continue
		}
		if _, ok := l.challenges[sc.Key]; !ok {
			c := sc.Challenge
			c.stored = true
			l.challenges[sc.Key] = &c
		}
	}
	for key, c := range l.challenges {
		if c.stored && !inStorage[key] {
			delete(l.challenges, key)
		}
	}
	bannedInStorage := make(map[netip.Addr]bool, len(bans))
	for _, b := range bans {
		bannedInStorage[b.IP] = true
		if !b.activeAt(now) {
			p.enqueue(deleteBan(b.IP))
			continue
		}
		if _, ok := l.bans[b.IP]; !ok {
			b.stored = true
			l.bans[b.IP] = &b
		}
	}
	for ip, b := range l.bans {
		if b.stored && !bannedInStorage[ip] {
			delete(l.bans, ip)
		}
	}
}

// loadAll reads every JSON value under dir. A value that vanished between
// the listing and the read (cleared meanwhile) is skipped, as is one that
// does not decode (logged by the caller's next write over it).
func loadAll[T any](ctx context.Context, storage certmagic.Storage, dir string) ([]T, error) {
	keys, err := storage.List(ctx, dir, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(keys))
	for _, key := range keys {
		data, err := storage.Load(ctx, key)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var v T
		if json.Unmarshal(data, &v) == nil {
			out = append(out, v)
		}
	}
	return out, nil
}
