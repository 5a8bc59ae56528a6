package captcha

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
	"go.uber.org/zap"
)

// dbBackend keeps a lockout's state in the database of an SQL token store
// (tokenstore.LockoutStore), shared by every server using that database.
//
// Unlike the storage persister, it counts failures in the database: each
// failed attempt is one atomic upsert that returns the attempt's rank in
// its run, so that of N concurrent bad attempts on any number of servers
// exactly max_failures are judged. Challenges and bans are written when
// they start and deleted when they end, at once; the questions a request
// asks (Banned, Challenged) are answered from memory, which the backend
// rereads every defaultSyncEvery and whenever the store reports a change
// (a PostgreSQL notification, an SQLite commit). A banned address's
// requests thus never reach the database. If the database cannot be
// asked, a failure is counted in memory instead, and logged.
type dbBackend struct {
	l     *Lockout
	store atomic.Pointer[lockoutStoreRef]
	// pending counts clears and resets in flight: while there are some,
	// memory is ahead of the database and the sync compares nothing. (A
	// challenge or ban being started is marked instead: it is not
	// "stored" until written, and the sync drops only stored entries.
	// Failed attempts, which may never stop, never hold off the sync.)
	pending atomic.Int64

	wake       chan struct{}
	unregister atomic.Pointer[func()]
	syncEvery  time.Duration
	lastPurge  time.Time
	stop       chan struct{}
	done       chan struct{}
	stopOnce   sync.Once
}

type lockoutStoreRef struct{ tokenstore.LockoutStore }

// How often old failure counts are purged from the database.
const purgeEvery = time.Minute

// failTimeout bounds the counting of a failed attempt in the database,
// which the attempt's answer waits for; past it the attempt is counted in
// memory.
const failTimeout = 2 * time.Second

// Count keys in the database: a lockout key's run, an address's run.
func userCountKey(key string) string  { return "c\x00" + key }
func ipCountKey(ip netip.Addr) string { return "i\x00" + ip.String() }

// PersistDB makes l keep its failure counts, challenges and bans in
// store's database, loading the challenges and bans there now, and
// starts the goroutine that rereads them.
func (l *Lockout) PersistDB(store tokenstore.LockoutStore) {
	d := &dbBackend{
		l:         l,
		wake:      make(chan struct{}, 1),
		syncEvery: defaultSyncEvery,
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	l.mu.Lock()
	l.db = d
	l.mu.Unlock()
	d.setStore(store)
	d.sync()
	go d.loop()
}

// setStore switches to store (the store of a reloaded config).
func (d *dbBackend) setStore(store tokenstore.LockoutStore) {
	d.store.Store(&lockoutStoreRef{store})
	unregister := store.OnLockoutChange(func() {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	})
	if old := d.unregister.Swap(&unregister); old != nil {
		(*old)()
	}
}

func (d *dbBackend) db() tokenstore.LockoutStore { return d.store.Load().LockoutStore }

func (d *dbBackend) close() {
	d.stopOnce.Do(func() {
		close(d.stop)
		<-d.done
		if u := d.unregister.Load(); u != nil {
			(*u)()
		}
	})
}

func (d *dbBackend) loop() {
	defer close(d.done)
	ticker := time.NewTicker(d.syncEvery)
	defer ticker.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-d.wake:
			d.sync()
		case <-ticker.C:
			d.l.expire()
			d.sync()
			d.purge()
		}
	}
}

// write runs a database write, holding off the sync meanwhile, and logs
// a failure.
func (d *dbBackend) write(doing string, fn func(ctx context.Context, db tokenstore.LockoutStore) error) {
	d.pending.Add(1)
	defer d.pending.Add(-1)
	d.do(doing, fn)
}

// do runs a database write and logs a failure, which it reports.
func (d *dbBackend) do(doing string, fn func(ctx context.Context, db tokenstore.LockoutStore) error) bool {
	ctx, cancel := context.WithTimeout(context.Background(), storageTimeout)
	defer cancel()
	if err := fn(ctx, d.db()); err != nil {
		d.l.logger.Load().Error("writing lockout state to the database; kept in memory only here",
			zap.String("doing", doing), zap.Error(err))
		return false
	}
	return true
}

// purge forgets failure runs that have lapsed.
func (d *dbBackend) purge() {
	s := d.l.settings.Load()
	now := d.l.now()
	if s.ResetAfter <= 0 || now.Sub(d.lastPurge) < purgeEvery {
		return
	}
	d.lastPurge = now
	d.write("forgetting old failure counts", func(ctx context.Context, db tokenstore.LockoutStore) error {
		return db.PurgeFailures(ctx, now.Add(-s.ResetAfter))
	})
}

// sync makes memory agree with the database: challenges and bans other
// servers started are added, those they ended (known to be stored, gone
// now) are dropped. It compares nothing while this server's writes are
// in flight.
func (d *dbBackend) sync() {
	if d.pending.Load() > 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), storageTimeout)
	defer cancel()
	recs, err := d.db().ListLockouts(ctx)
	if err != nil {
		d.l.logger.Load().Error("reading lockout state from the database", zap.Error(err))
		return
	}
	l := d.l
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if d.pending.Load() > 0 {
		return
	}
	challenges := make(map[string]bool)
	bans := make(map[netip.Addr]bool)
	for _, rec := range recs {
		ip, _ := netip.ParseAddr(rec.IP)
		switch rec.Kind {
		case tokenstore.LockoutChallenge:
			c := Challenge{User: rec.User, IP: ip, Started: rec.Started, Expires: rec.Until, stored: true}
			if !c.activeAt(now) {
				continue // lapsed; expire deletes it
			}
			challenges[rec.Key] = true
			if _, ok := l.challenges[rec.Key]; !ok {
				l.challenges[rec.Key] = &c
			}
		case tokenstore.LockoutBan:
			b := Ban{IP: ip, Started: rec.Started, Until: rec.Until, stored: true}
			if !ip.IsValid() || !b.activeAt(now) {
				continue
			}
			bans[ip] = true
			if _, ok := l.bans[ip]; !ok {
				l.bans[ip] = &b
			}
		}
	}
	for key, c := range l.challenges {
		if c.stored && !challenges[key] {
			delete(l.challenges, key)
		}
	}
	for ip, b := range l.bans {
		if b.stored && !bans[ip] {
			delete(l.bans, ip)
		}
	}
}

func challengeRecord(key string, c Challenge) tokenstore.LockoutRecord {
	return tokenstore.LockoutRecord{Kind: tokenstore.LockoutChallenge, Key: key, User: c.User,
		IP: addrString(c.IP), Started: c.Started, Until: c.Expires}
}

func banRecord(b Ban) tokenstore.LockoutRecord {
	return tokenstore.LockoutRecord{Kind: tokenstore.LockoutBan, Key: b.IP.String(), IP: b.IP.String(),
		Started: b.Started, Until: b.Until}
}

// failDB is Fail with the counts in the database.
func (l *Lockout) failDB(d *dbBackend, user string, ip netip.Addr) (challenged bool) {
	s := l.settings.Load()
	now := l.now()
	key := l.key(user, ip)
	countUser := user != "" && s.MaxFailures > 0
	countIP := s.IPMaxFailures > 0
	l.mu.RLock()
	if countUser {
		if c, ok := l.challenges[key]; ok && c.activeAt(now) {
			l.mu.RUnlock()
			return true
		}
	}
	if b, ok := l.bans[ip]; ok && b.activeAt(now) {
		countIP = false
	}
	l.mu.RUnlock()

	var userN, ipN int
	if countUser || countIP {
		ctx, cancel := context.WithTimeout(context.Background(), failTimeout)
		defer cancel()
		db := d.db()
		var err error
		if countUser {
			userN, err = db.AddFailure(ctx, userCountKey(key), user, now, s.ResetAfter)
		}
		if err == nil && countIP {
			ipN, err = db.AddFailure(ctx, ipCountKey(ip), "", now, s.ResetAfter)
		}
		if err != nil {
			l.logger.Load().Error("counting a failed attempt in the database; counting it in memory", zap.Error(err))
			return l.failMemory(user, ip)
		}
	}

	var started, startedLate *Challenge
	var banned *Ban
	l.mu.Lock()
	if countUser {
		// The attempt's rank in the run decides: the first max_failures
		// are judged, the max_failures-th starts the challenge, later
		// ones (concurrent, here or on other servers) are refused.
		switch c, ok := l.challenges[key]; {
		case userN < s.MaxFailures:
			l.counts[key] = &failureCount{n: userN, last: now}
		case userN == s.MaxFailures || !ok || !c.activeAt(now):
			delete(l.counts, key)
			c := &Challenge{User: user, Started: now}
			if s.Key == KeyUserIP {
				c.IP = ip
			}
			if s.ResetAfter > 0 {
				c.Expires = now.Add(s.ResetAfter)
			}
			l.challenges[key] = c
			if userN == s.MaxFailures {
				started = c
			} else {
				startedLate = c // by another attempt not yet seen here
				challenged = true
			}
		default:
			challenged = true
		}
	}
	if countIP {
		if b, ok := l.bans[ip]; !ok || !b.activeAt(now) {
			if ipN >= s.IPMaxFailures {
				delete(l.ipCounts, ip)
				banned = &Ban{IP: ip, Started: now, Until: now.Add(s.IPBan)}
				l.bans[ip] = banned
			} else {
				l.ipCounts[ip] = &failureCount{n: ipN, last: now}
			}
		}
	}
	l.mu.Unlock()

	// Written now, they are "stored" once written: from then on the sync
	// drops them when another server has ended them.
	for _, c := range []*Challenge{started, startedLate} {
		if c != nil && d.do("starting a challenge", func(ctx context.Context, db tokenstore.LockoutStore) error {
			return db.PutLockout(ctx, challengeRecord(key, *c))
		}) {
			l.mu.Lock()
			if l.challenges[key] == c {
				c.stored = true
			}
			l.mu.Unlock()
		}
	}
	if banned != nil && d.do("banning an address", func(ctx context.Context, db tokenstore.LockoutStore) error {
		return db.PutLockout(ctx, banRecord(*banned), ipCountKey(ip))
	}) {
		l.mu.Lock()
		if l.bans[ip] == banned {
			banned.stored = true
		}
		l.mu.Unlock()
	}
	l.logStarts(s, user, ip, started, banned)
	return challenged
}
