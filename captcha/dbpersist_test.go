package captcha

import (
	"context"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/internal/testdb"
	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// countingLockoutStore counts the writes a lockout makes to a real store.
type countingLockoutStore struct {
	tokenstore.LockoutStore
	writes atomic.Int64
}

func (c *countingLockoutStore) AddFailure(ctx context.Context, key, user string, now time.Time, window time.Duration) (int, error) {
	c.writes.Add(1)
	return c.LockoutStore.AddFailure(ctx, key, user, now, window)
}

func (c *countingLockoutStore) ResetFailures(ctx context.Context, keys ...string) error {
	c.writes.Add(1)
	return c.LockoutStore.ResetFailures(ctx, keys...)
}

func (c *countingLockoutStore) PutLockout(ctx context.Context, rec tokenstore.LockoutRecord, resetKeys ...string) error {
	c.writes.Add(1)
	return c.LockoutStore.PutLockout(ctx, rec, resetKeys...)
}

func (c *countingLockoutStore) DeleteLockout(ctx context.Context, kind, key string, countKeys ...string) error {
	c.writes.Add(1)
	return c.LockoutStore.DeleteLockout(ctx, kind, key, countKeys...)
}

func (c *countingLockoutStore) DeleteUserLockouts(ctx context.Context, user string) error {
	c.writes.Add(1)
	return c.LockoutStore.DeleteUserLockouts(ctx, user)
}

// dbServers returns a function opening, like a server would, the store of
// realm "default" in one shared database of each dialect, with a look-up
// cache (which is what makes a store watch for other servers' changes),
// and how long a change may take to reach the other servers.
func dbServers(t *testing.T) []struct {
	name   string
	open   func(t *testing.T) *countingLockoutStore
	within time.Duration
} {
	openWith := func(c tokenstore.Config) func(t *testing.T) *countingLockoutStore {
		return func(t *testing.T) *countingLockoutStore {
			s, err := tokenstore.Open(c, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return &countingLockoutStore{LockoutStore: s.(tokenstore.LockoutStore)}
		}
	}
	return []struct {
		name   string
		open   func(t *testing.T) *countingLockoutStore
		within time.Duration
	}{
		{"sqlite", openWith(tokenstore.Config{Type: tokenstore.TypeSQLite, Path: filepath.Join(t.TempDir(), "tokens.db"),
			Realm: "default", CacheTTL: time.Minute}), 2 * time.Second},
		{"postgres", openWith(tokenstore.Config{Type: tokenstore.TypePostgres, DSN: testdb.FreshPostgresDatabase(t),
			Realm: "default", CacheTTL: time.Minute}), time.Second},
	}
}

func dbLockout(t *testing.T, store tokenstore.LockoutStore, now func() time.Time) *Lockout {
	l := NewLockout(settings(nil), nil, now)
	l.PersistDB(store)
	t.Cleanup(l.Close)
	return l
}

// within polls cond until it holds or d has passed.
func within(d time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > d {
			return time.Since(start), false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDBLockoutSharedByServers(t *testing.T) {
	for _, db := range dbServers(t) {
		t.Run(db.name, func(t *testing.T) {
			c := newClock()
			storeA, storeB := db.open(t), db.open(t)
			a, b := dbLockout(t, storeA, c.Now), dbLockout(t, storeB, c.Now)

			// 60 concurrent bad attempts, half on each server: exactly
			// max_failures are judged in all.
			var judged atomic.Int64
			var wg sync.WaitGroup
			for i := 0; i < 60; i++ {
				l := a
				if i%2 == 1 {
					l = b
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					if !l.Fail("alice", home) {
						judged.Add(1)
					}
				}()
			}
			wg.Wait()
			if n := judged.Load(); n != DefaultMaxFailures {
				t.Errorf("%d attempts judged across two servers, want exactly %d", n, DefaultMaxFailures)
			}
			if !a.Challenged("alice", home) && !b.Challenged("alice", home) {
				t.Fatal("no server holds the challenge")
			}
			// Whichever started it, the other refuses alice soon.
			for _, l := range []*Lockout{a, b} {
				if took, ok := within(db.within, func() bool { return l.Challenged("alice", home) }); !ok {
					t.Errorf("challenge not seen on both servers after %v", took)
				}
			}
			// The address made 60 failures: banned (after 20) on both.
			for _, l := range []*Lockout{a, b} {
				if took, ok := within(db.within, func() bool { _, banned := l.Banned(home); return banned }); !ok {
					t.Errorf("ban not seen on both servers after %v", took)
				}
			}

			// A banned address and a challenged user cost no write.
			writes := storeA.writes.Load() + storeB.writes.Load()
			for i := 0; i < 1000; i++ {
				a.Banned(home)
				b.Banned(home)
				a.Challenged("alice", home)
				if !a.Fail("alice", home) {
					t.Fatal("an attempt under a challenge was judged")
				}
			}
			if n := storeA.writes.Load() + storeB.writes.Load(); n != writes {
				t.Errorf("%d database writes for requests from a banned address and a challenged user, want 0", n-writes)
			}

			// A challenge started on A is refused on B within the deadline.
			for i := 0; i < DefaultMaxFailures; i++ {
				a.Fail("bob", away)
			}
			if !a.Challenged("bob", away) {
				t.Fatal("A did not challenge bob")
			}
			took, ok := within(db.within, func() bool { return b.Challenged("bob", away) })
			if !ok {
				t.Errorf("B does not refuse bob %v after A challenged him", took)
			}
			t.Logf("challenge reached the other server in %v", took)

			// Cleared on B (an admin reset), lifted on A.
			if b.ClearUser("bob") != 1 {
				t.Error("B cleared no challenge of bob")
			}
			took, ok = within(db.within, func() bool { return !a.Challenged("bob", away) })
			if !ok {
				t.Errorf("A still refuses bob %v after B cleared him", took)
			}
			t.Logf("clear reached the other server in %v", took)
			// And the count starts again: one failure does not challenge.
			if a.Fail("bob", away) || a.Challenged("bob", away) {
				t.Error("bob challenged after one failure following a clear")
			}
			b.ClearIP(home)
			if took, ok := within(db.within, func() bool { _, banned := a.Banned(home); return !banned }); !ok {
				t.Errorf("A still bans the address %v after B cleared it", took)
			}

			// A restarted server (a new store on the same database) keeps
			// the challenges and bans.
			for i := 0; i < DefaultIPMaxFailures; i++ {
				a.Fail("", another)
			}
			a.Close()
			restarted := dbLockout(t, db.open(t), c.Now)
			if !restarted.Challenged("alice", home) {
				t.Error("the challenge of alice did not survive a restart")
			}
			if _, banned := restarted.Banned(another); !banned {
				t.Error("the ban did not survive a restart")
			}
		})
	}
}

// A success resets the count in the database (only when this server has
// counted failures for the key), and a lapsed challenge is deleted.
func TestDBLockoutSucceedAndExpire(t *testing.T) {
	for _, db := range dbServers(t) {
		t.Run(db.name, func(t *testing.T) {
			c := newClock()
			store := db.open(t)
			a := dbLockout(t, store, c.Now)
			writes := store.writes.Load()
			a.Succeed("carol", home)
			if n := store.writes.Load(); n != writes {
				t.Errorf("a success without failures wrote %d times", n-writes)
			}
			for i := 0; i < DefaultMaxFailures-1; i++ {
				a.Fail("carol", home)
			}
			a.Succeed("carol", home)
			a.Fail("carol", home)
			if a.Challenged("carol", home) {
				t.Error("challenged: the success did not reset the count")
			}
			for i := 0; i < DefaultMaxFailures; i++ {
				a.Fail("dave", home)
			}
			c.Advance(DefaultResetAfter)
			a.expire()
			recs, err := store.ListLockouts(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				if r.Kind == tokenstore.LockoutChallenge {
					t.Errorf("lapsed challenge still stored: %+v", r)
				}
			}
			if a.Fail("dave", home) || a.Challenged("dave", home) {
				t.Error("dave challenged after one failure following a lapsed challenge")
			}
		})
	}
}
