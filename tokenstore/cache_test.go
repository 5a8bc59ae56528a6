package tokenstore

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/internal/testdb"
	"github.com/jackc/pgx/v5"
)

// The SQL stores' look-up cache, against real SQLite and PostgreSQL
// databases. Queries are counted through the store's query hook, and time
// is a test clock, never a sleep, except where another server's change
// must arrive (a notification, a data_version poll): there the test polls
// against the deadline SPEC §8 promises.

// testClock is a clock that moves only when told to.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newTestClock() *testClock { return &testClock{now: baseTime} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// cachedStore is a cached SQL store under test, with its query count.
type cachedStore struct {
	*SQLStore
	queries *atomic.Int64
}

// cachedOpener opens another store on the test's database; opts.cacheTTL
// defaults to an hour and its query hook is set to count.
type cachedOpener func(t *testing.T, realm string, opts sqlOptions) cachedStore

type sqlDatabase struct {
	dialect string
	// deadline is how soon SPEC §8 promises that other servers see a
	// change.
	deadline time.Duration
	open     cachedOpener
	dsn      string // PostgreSQL
}

// forEachCachedSQL runs test once per SQL dialect, each on a fresh
// database, in parallel.
func forEachCachedSQL(t *testing.T, test func(t *testing.T, db sqlDatabase)) {
	t.Helper()
	withDefaults := func(opts sqlOptions) (sqlOptions, *atomic.Int64) {
		var n atomic.Int64
		if opts.cacheTTL == 0 {
			opts.cacheTTL = time.Hour
		}
		opts.flushEvery = cmpOr(opts.flushEvery, noAutoFlush)
		prev := opts.queryHook
		opts.queryHook = func() {
			n.Add(1)
			if prev != nil {
				prev()
			}
		}
		return opts, &n
	}
	t.Run(TypeSQLite, func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "tokens.db")
		test(t, sqlDatabase{dialect: TypeSQLite, deadline: 2 * time.Second,
			open: func(t *testing.T, realm string, opts sqlOptions) cachedStore {
				t.Helper()
				opts, n := withDefaults(opts)
				s, err := openSQLiteWith(path, realm, nil, opts)
				if err != nil {
					t.Fatalf("opening %s: %v", path, err)
				}
				t.Cleanup(func() { s.Close() })
				return cachedStore{s, n}
			}})
	})
	t.Run(TypePostgres, func(t *testing.T) {
		t.Parallel()
		dsn := testdb.FreshPostgresDatabase(t)
		test(t, sqlDatabase{dialect: TypePostgres, deadline: time.Second, dsn: dsn,
			open: func(t *testing.T, realm string, opts sqlOptions) cachedStore {
				t.Helper()
				opts, n := withDefaults(opts)
				s, err := openPostgresWith(dsn, realm, nil, opts)
				if err != nil {
					t.Fatalf("opening the PostgreSQL store: %v", err)
				}
				t.Cleanup(func() { s.Close() })
				return cachedStore{s, n}
			}})
	})
}

func cmpOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// readCall is one of the request path's reads.
type readCall struct {
	name string
	call func(s Store) error
}

// requestReads reads what a Basic request of alice with token a, a
// Bearer request with an unknown token and a Basic request of an unknown
// user read.
var requestReads = []readCall{
	{"LookupToken(a)", func(s Store) error { _, err := s.LookupToken(bg, DigestOf("secret-of-a")); return err }},
	{"LookupToken(unknown)", func(s Store) error {
		_, err := s.LookupToken(bg, DigestOf("unknown"))
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return fmt.Errorf("want ErrNotFound, got %w", err)
	}},
	{"LookupUser(alice)", func(s Store) error { _, err := s.LookupUser(bg, "alice"); return err }},
	{"LookupUser(nobody)", func(s Store) error { _, err := s.LookupUser(bg, "nobody"); return err }},
	{"LookupBasic(alice)", func(s Store) error { _, err := s.LookupBasic(bg, "alice"); return err }},
	{"LookupBasic(nobody)", func(s Store) error { _, err := s.LookupBasic(bg, "nobody"); return err }},
	{"SlowHashModel", func(s Store) error { _, err := s.SlowHashModel(bg); return err }},
	{"Settings", func(s Store) error { _, err := s.Settings(bg); return err }},
}

// seed fills the realm r: token a and slow token s of alice, alice's user
// record, settings.
func seed(t *testing.T, s Store) {
	t.Helper()
	mustCreate(t, s, tokenAt(t, "a", "alice", baseTime), slowToken(t, "s", "alice", bcryptScheme+bcryptMCF(t, "pw")))
	if err := s.PutUser(bg, "alice", User{Groups: []string{"dev"}}); err != nil {
		t.Fatal(err)
	}
	off := false
	if err := s.PutSettings(bg, Settings{TestEndpointEnabled: &off}); err != nil {
		t.Fatal(err)
	}
	if sq, ok := s.(cachedStore); ok {
		settle(t, sq.SQLStore)
	}
}

// settle waits until s has heard of the writes made so far, its own
// included (a PostgreSQL store hears its own notifications, an SQLite
// store sees its pool's commits), so that their late arrival does not
// clear the cache in the middle of a test. The cache is clear after.
func settle(t *testing.T, s *SQLStore) {
	t.Helper()
	switch s.dialect {
	case TypeSQLite:
		s.pollDataVersion()
	case TypePostgres:
		// Notifications arrive in commit order: once this one has, so
		// have all before it.
		marker := fmt.Sprintf("%s:settle:%d", s.realm, time.Now().UnixNano())
		if _, err := s.db.Exec(`SELECT pg_notify($1, $2)`, notifyChannel, marker); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "the store's own notifications", func() bool {
			got, _ := s.lastNotice.Load().(string)
			return got == marker
		})
	}
	s.cache.clear()
}

// TestCacheWarmNoQueries: on a warm cache the request path's reads, found
// or not, ask the database nothing; each cold one asks once.
func TestCacheWarmNoQueries(t *testing.T) {
	forEachCachedSQL(t, func(t *testing.T, db sqlDatabase) {
		s := db.open(t, "r", sqlOptions{})
		seed(t, s)
		for _, round := range []struct {
			name string
			want int64 // queries per read
		}{{"cold", 1}, {"warm", 0}, {"warm again", 0}} {
			for _, rc := range requestReads {
				before := s.queries.Load()
				if err := rc.call(s); err != nil {
					t.Fatalf("%s %s: %v", round.name, rc.name, err)
				}
				if got := s.queries.Load() - before; got != round.want {
					t.Errorf("%s %s: %d queries, want %d", round.name, rc.name, got, round.want)
				}
			}
		}
		if hits, misses := s.cache.hits.Load(), s.cache.misses.Load(); hits != int64(2*len(requestReads)) || misses != int64(len(requestReads)) {
			t.Errorf("hits %d, misses %d; want %d, %d", hits, misses, 2*len(requestReads), len(requestReads))
		}
	})
}

// TestCacheNegativeBound: a flood of distinct unknown tokens asks the
// database once per token, and the cache keeps at most negativeMax of
// them, evicting the oldest.
func TestCacheNegativeBound(t *testing.T) {
	const max, flood = 10, 35
	forEachCachedSQL(t, func(t *testing.T, db sqlDatabase) {
		s := db.open(t, "r", sqlOptions{negativeMax: max})
		seed(t, s)
		lookup := func(i int) {
			t.Helper()
			if _, err := s.LookupToken(bg, DigestOf(fmt.Sprint("random-", i))); !errors.Is(err, ErrNotFound) {
				t.Fatalf("LookupToken(random-%d): %v, want ErrNotFound", i, err)
			}
		}
		for i := range flood {
			before := s.queries.Load()
			for range 3 {
				lookup(i)
			}
			if got := s.queries.Load() - before; got != 1 {
				t.Errorf("three look-ups of random-%d: %d queries, want 1", i, got)
			}
		}
		if _, neg := s.cache.size(); neg != max {
			t.Errorf("%d negative entries cached after %d distinct tokens, want the bound %d", neg, flood, max)
		}
		tests := []struct {
			name  string
			i     int
			query int64
		}{
			{"newest kept", flood - 1, 0},
			{"oldest kept", flood - max, 0},
			{"evicted", flood - max - 1, 1},
			{"first evicted", 0, 1},
		}
		for _, tt := range tests {
			before := s.queries.Load()
			lookup(tt.i)
			if got := s.queries.Load() - before; got != tt.query {
				t.Errorf("%s (random-%d): %d queries, want %d", tt.name, tt.i, got, tt.query)
			}
		}
		// Found tokens do not count against the bound and are not evicted.
		before := s.queries.Load()
		for range 2 {
			if _, err := s.LookupToken(bg, DigestOf("secret-of-a")); err != nil {
				t.Fatal(err)
			}
			for i := range max + 5 {
				lookup(1000 + i)
			}
		}
		if got := s.queries.Load() - before; got != 1+2*(max+5) {
			t.Errorf("token a and a flood: %d queries, want %d (a once)", got, 1+2*(max+5))
		}
		if all, neg := s.cache.size(); neg > max || all > neg+1 {
			t.Errorf("cache holds %d entries, %d negative; want at most %d negative", all, neg, max)
		}
	})
}

// TestCacheTTL: an answer is trusted for the TTL and no longer, found or
// not; the clock is the test's.
func TestCacheTTL(t *testing.T) {
	const ttl = 30 * time.Second
	forEachCachedSQL(t, func(t *testing.T, db sqlDatabase) {
		clock := newTestClock()
		s := db.open(t, "r", sqlOptions{cacheTTL: ttl, now: clock.Now})
		seed(t, s)
		steps := []struct {
			advance time.Duration
			queries int64 // per read
		}{
			{0, 1},                       // cold
			{ttl - time.Nanosecond, 0},   // still fresh
			{time.Nanosecond, 1},         // expired exactly at the TTL: asked again
			{ttl / 2, 0},                 // the new answer is fresh
			{ttl/2 - time.Nanosecond, 0}, // until its own TTL
			{time.Nanosecond, 1},         // expired again
			{365 * 24 * time.Hour, 1},    // long expired
			{0, 0},
		}
		for i, step := range steps {
			clock.Advance(step.advance)
			for _, rc := range requestReads {
				before := s.queries.Load()
				if err := rc.call(s); err != nil {
					t.Fatalf("step %d %s: %v", i, rc.name, err)
				}
				if got := s.queries.Load() - before; got != step.queries {
					t.Errorf("step %d (+%v) %s: %d queries, want %d", i, step.advance, rc.name, got, step.queries)
				}
			}
		}
		// A shorter TTL (a reload with a new cache_ttl) applies at once.
		s.SetCacheTTL(time.Second)
		clock.Advance(0)
		before := s.queries.Load()
		_ = requestReads[0].call(s)
		clock.Advance(time.Second)
		_ = requestReads[0].call(s)
		if got := s.queries.Load() - before; got != 2 {
			t.Errorf("after SetCacheTTL(1s): %d queries over 1s, want 2", got)
		}
	})
}

// TestCacheSingleflight: concurrent misses of one key share one query;
// different keys do not.
func TestCacheSingleflight(t *testing.T) {
	const callers = 20
	forEachCachedSQL(t, func(t *testing.T, db sqlDatabase) {
		release := make(chan struct{})
		var gate atomic.Bool
		s := db.open(t, "r", sqlOptions{queryHook: func() {
			if gate.Load() {
				<-release
			}
		}})
		seed(t, s)
		tests := []struct {
			name    string
			secrets func(i int) string
			queries int64
		}{
			{"same token", func(int) string { return "secret-of-a" }, 1},
			{"same unknown token", func(int) string { return "unknown" }, 1},
			{"distinct tokens", func(i int) string { return fmt.Sprint("distinct-", i) }, callers},
		}
		for _, tt := range tests {
			release = make(chan struct{})
			gate.Store(true)
			before := s.queries.Load()
			misses := s.cache.misses.Load()
			var wg sync.WaitGroup
			results := make([]*Token, callers)
			errs := make([]error, callers)
			for i := range callers {
				wg.Go(func() { results[i], errs[i] = s.LookupToken(bg, DigestOf(tt.secrets(i))) })
			}
			// Every caller has missed (and joined a query) before any
			// query may answer.
			deadline := time.Now().Add(10 * time.Second)
			for s.cache.misses.Load()-misses < callers && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			close(release)
			wg.Wait()
			gate.Store(false)
			if got := s.queries.Load() - before; got != tt.queries {
				t.Errorf("%s: %d concurrent look-ups made %d queries, want %d", tt.name, callers, got, tt.queries)
			}
			for i := range callers {
				if tt.secrets(i) == "secret-of-a" {
					if errs[i] != nil || results[i] == nil || results[i].ID != "a" {
						t.Errorf("%s: caller %d got %v, %v", tt.name, i, results[i], errs[i])
					}
				} else if !errors.Is(errs[i], ErrNotFound) {
					t.Errorf("%s: caller %d got %v, want ErrNotFound", tt.name, i, errs[i])
				}
			}
		}
	})
}

// A cachedWrite changes what a read answers; check says whether a store
// shows the change yet.
type cachedWrite struct {
	name  string
	write func(t *testing.T, s Store)
	check func(s Store) (bool, error)
}

var cachedWrites = []cachedWrite{
	{"revoke", func(t *testing.T, s Store) {
		if _, err := s.RevokeToken(bg, "a", baseTime); err != nil {
			t.Fatal(err)
		}
	}, func(s Store) (bool, error) {
		tok, err := s.LookupToken(bg, DigestOf("secret-of-a"))
		return err == nil && tok.Revoked != nil, err
	}},
	{"create a token looked up before", func(t *testing.T, s Store) {
		mustCreate(t, s, tokenAt(t, "new", "bob", baseTime))
	}, func(s Store) (bool, error) {
		_, err := s.LookupToken(bg, DigestOf("secret-of-new"))
		if errors.Is(err, ErrNotFound) {
			return false, nil
		}
		return err == nil, err
	}},
	{"revoke user", func(t *testing.T, s Store) {
		if _, err := s.RevokeUserTokens(bg, "alice", baseTime); err != nil {
			t.Fatal(err)
		}
	}, func(s Store) (bool, error) {
		tok, err := s.LookupToken(bg, DigestOf("secret-of-a"))
		if err != nil {
			return false, err
		}
		slow, err := s.LookupBasic(bg, "alice")
		return tok.Revoked != nil && len(slow) == 1 && slow[0].Revoked != nil, err
	}},
	{"rotate", func(t *testing.T, s Store) {
		next := tokenAt(t, "next", "alice", baseTime)
		if _, err := s.RotateToken(bg, "a", next, baseTime.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}, func(s Store) (bool, error) {
		tok, err := s.LookupToken(bg, DigestOf("secret-of-a"))
		if err != nil {
			return false, err
		}
		_, err = s.LookupToken(bg, DigestOf("secret-of-next"))
		if errors.Is(err, ErrNotFound) {
			return false, nil
		}
		return err == nil && tok.Expires != nil, err
	}},
	{"put user", func(t *testing.T, s Store) {
		if err := s.PutUser(bg, "alice", User{Groups: []string{"ops"}, Disabled: true}); err != nil {
			t.Fatal(err)
		}
	}, func(s Store) (bool, error) {
		u, err := s.LookupUser(bg, "alice")
		return err == nil && u != nil && u.Disabled && slices.Equal(u.Groups, []string{"ops"}), err
	}},
	{"put a user looked up before", func(t *testing.T, s Store) {
		if err := s.PutUser(bg, "nobody", User{Groups: []string{"ops"}}); err != nil {
			t.Fatal(err)
		}
	}, func(s Store) (bool, error) {
		u, err := s.LookupUser(bg, "nobody")
		return err == nil && u != nil, err
	}},
	{"put settings", func(t *testing.T, s Store) {
		on := true
		if err := s.PutSettings(bg, Settings{TestEndpointEnabled: &on}); err != nil {
			t.Fatal(err)
		}
	}, func(s Store) (bool, error) {
		st, err := s.Settings(bg)
		return err == nil && st.TestEndpointEnabled != nil && *st.TestEndpointEnabled, err
	}},
	{"first slow hash of a user", func(t *testing.T, s Store) {
		mustCreate(t, s, slowToken(t, "bs", "bob", bcryptScheme+bcryptMCF(t, "pw")))
	}, func(s Store) (bool, error) {
		list, err := s.LookupBasic(bg, "bob")
		return err == nil && len(list) == 1, err
	}},
}

// warmAll reads everything the writes' checks read, so that the cache
// holds the answers from before the write.
func warmAll(t *testing.T, s Store) {
	t.Helper()
	for _, w := range cachedWrites {
		if done, err := w.check(s); err != nil || done {
			t.Fatalf("before %s: check = %v, %v; want false, nil", w.name, done, err)
		}
	}
	for _, rc := range requestReads {
		if err := rc.call(s); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCacheWriteInvalidation: a write through the store applies to its
// reads at once, although the cache's clock never moves.
func TestCacheWriteInvalidation(t *testing.T) {
	forEachCachedSQL(t, func(t *testing.T, db sqlDatabase) {
		for i, w := range cachedWrites {
			t.Run(w.name, func(t *testing.T) {
				clock := newTestClock()
				realm := fmt.Sprint("r", i)
				s := db.open(t, realm, sqlOptions{now: clock.Now})
				seed(t, s)
				warmAll(t, s)
				w.write(t, s)
				if done, err := w.check(s); !done || err != nil {
					t.Errorf("right after %s through the store: check = %v, %v; want true", w.name, done, err)
				}
			})
		}
	})
}

// TestCacheOtherServer: a write through another store on the same
// database (another server) reaches this store's cache within SPEC §8's
// deadline: 1 s over PostgreSQL's NOTIFY, 2 s with SQLite's data_version
// watch. The TTL is an hour, so only the watch can explain it. A store of
// another realm keeps its cache.
func TestCacheOtherServer(t *testing.T) {
	forEachCachedSQL(t, func(t *testing.T, db sqlDatabase) {
		for i, w := range cachedWrites {
			t.Run(w.name, func(t *testing.T) {
				t.Parallel()
				realm := fmt.Sprint("r", i)
				here := db.open(t, realm, sqlOptions{})
				there := db.open(t, realm, sqlOptions{})
				seed(t, there)
				warmAll(t, here)
				start := time.Now()
				w.write(t, there)
				waitFor(t, db.deadline, w.name+" seen by the other server", func() bool { ok, _ := w.check(here); return ok })
				t.Logf("%s seen by the other server after %v", w.name, time.Since(start).Round(time.Millisecond))
			})
		}
	})
}

// TestCacheDatabaseDown: with the database gone, cached answers are served
// until their TTL; everything else, and everything after the TTL, fails
// with ErrUnavailable, never with success.
func TestCacheDatabaseDown(t *testing.T) {
	const ttl = 30 * time.Second
	forEachCachedSQL(t, func(t *testing.T, db sqlDatabase) {
		clock := newTestClock()
		s := db.open(t, "r", sqlOptions{cacheTTL: ttl, now: clock.Now})
		seed(t, s)
		for _, rc := range requestReads {
			if err := rc.call(s); err != nil {
				t.Fatal(err)
			}
		}
		clock.Advance(ttl / 2)
		s.db.Close()

		for _, rc := range requestReads {
			if err := rc.call(s); err != nil {
				t.Errorf("%s cached, database down: %v; want the cached answer", rc.name, err)
			}
		}
		uncached := map[string]func() error{
			"LookupToken(other)": func() error { _, err := s.LookupToken(bg, DigestOf("other")); return err },
			"LookupUser(bob)":    func() error { _, err := s.LookupUser(bg, "bob"); return err },
			"LookupBasic(bob)":   func() error { _, err := s.LookupBasic(bg, "bob"); return err },
		}
		for name, call := range uncached {
			if err := call(); !errors.Is(err, ErrUnavailable) {
				t.Errorf("%s not cached, database down: %v; want ErrUnavailable", name, err)
			}
			// Failures are not cached as answers.
			if err := call(); !errors.Is(err, ErrUnavailable) {
				t.Errorf("%s again: %v; want ErrUnavailable", name, err)
			}
		}
		// A write fails and leaves the cache as it was.
		if _, err := s.RevokeToken(bg, "a", baseTime); !errors.Is(err, ErrUnavailable) {
			t.Errorf("RevokeToken, database down: %v; want ErrUnavailable", err)
		}
		if tok, err := s.LookupToken(bg, DigestOf("secret-of-a")); err != nil || tok.Revoked != nil {
			t.Errorf("token a after a failed write: %+v, %v; want the cached token", tok, err)
		}

		clock.Advance(ttl / 2)
		for _, rc := range requestReads {
			if err := rc.call(s); !errors.Is(err, ErrUnavailable) {
				t.Errorf("%s after the TTL, database down: %v; want ErrUnavailable", rc.name, err)
			}
		}
	})
}

// TestCacheRequestCanceled: a caller whose request goes away stops
// waiting; the shared query goes on for the others.
func TestCacheRequestCanceled(t *testing.T) {
	forEachCachedSQL(t, func(t *testing.T, db sqlDatabase) {
		release := make(chan struct{})
		var gate atomic.Bool
		s := db.open(t, "r", sqlOptions{queryHook: func() {
			if gate.Load() {
				<-release
			}
		}})
		seed(t, s)
		gate.Store(true)
		ctx, cancel := context.WithCancel(bg)
		done := make(chan error)
		go func() { _, err := s.LookupToken(ctx, DigestOf("secret-of-a")); done <- err }()
		other := make(chan error)
		go func() {
			for s.cache.misses.Load() < 1 {
				time.Sleep(time.Millisecond)
			}
			_, err := s.LookupToken(bg, DigestOf("secret-of-a"))
			other <- err
		}()
		for s.cache.misses.Load() < 2 {
			time.Sleep(time.Millisecond)
		}
		cancel()
		if err := <-done; !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.Canceled) {
			t.Errorf("canceled caller: %v; want ErrUnavailable wrapping context.Canceled", err)
		}
		close(release)
		gate.Store(false)
		if err := <-other; err != nil {
			t.Errorf("the other caller: %v; want the token", err)
		}
	})
}

// TestPostgresListenerReconnect: when the listening connection is lost
// (its backend terminated), the store reconnects, clears its cache (it
// may have missed notifications), and hears notifications again.
func TestPostgresListenerReconnect(t *testing.T) {
	t.Parallel()
	dsn := testdb.FreshPostgresDatabase(t)
	var queries atomic.Int64
	s, err := openPostgresWith(dsn, "r", nil, sqlOptions{flushEvery: noAutoFlush, cacheTTL: time.Hour,
		listenBackoff: 10 * time.Millisecond, queryHook: func() { queries.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	seed(t, s)
	lookup := func() *Token {
		t.Helper()
		tok, err := s.LookupToken(bg, DigestOf("secret-of-a"))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	lookup()
	if n := queries.Load(); n != 1 {
		t.Fatalf("%d queries warming the cache, want 1", n)
	}

	pid := s.listenPID.Load()
	if pid == 0 || s.listens.Load() != 1 {
		t.Fatalf("listener pid %d, listens %d; want a listener", pid, s.listens.Load())
	}
	conn, err := pgx.Connect(bg, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(bg)
	var ok bool
	if err := conn.QueryRow(bg, `SELECT pg_terminate_backend($1)`, pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, ok, err)
	}
	waitFor(t, 5*time.Second, "the listener reconnecting", func() bool {
		return s.listens.Load() == 2 && s.listenPID.Load() != 0
	})
	if got := s.listenPID.Load(); got == pid {
		t.Errorf("the listener's backend is still %d", got)
	}
	before := queries.Load()
	lookup()
	if got := queries.Load() - before; got != 1 {
		t.Errorf("after the reconnect the look-up made %d queries, want 1 (the cache cleared)", got)
	}

	// The new connection hears changes: a revocation by another server
	// (here the CLI's way: a store with no cache) arrives within 1 s.
	other, err := openPostgres(dsn, "r", nil, noAutoFlush)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	if _, err := other.RevokeToken(bg, "a", baseTime); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "a revocation after the reconnect", func() bool {
		return lookup().Revoked != nil
	})
}

// TestPostgresServerDown: a real outage. The test starts a PostgreSQL
// cluster of its own (scripts/pg-test-cluster.sh) and stops it while the
// store is serving: cached answers are served until their TTL, though
// the listener has lost its connection; everything else, and everything
// after the TTL, fails with ErrUnavailable.
func TestPostgresServerDown(t *testing.T) {
	t.Parallel()
	testdb.PostgresDSN(t) // the same prerequisites as every PostgreSQL test
	script, err := filepath.Abs(filepath.Join("..", "scripts", "pg-test-cluster.sh"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("bash", script).Output()
	if err != nil {
		t.Fatalf("starting a PostgreSQL cluster: %v", err)
	}
	var dir, dsn string
	for line := range strings.Lines(string(out)) {
		line = strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(line, "PG_DIR="); ok {
			dir = v
		}
		if v, ok := strings.CutPrefix(line, "PG_DSN="); ok {
			dsn = v
		}
	}
	if dir == "" || dsn == "" {
		t.Fatalf("pg-test-cluster.sh printed no PG_DIR and PG_DSN: %q", out)
	}
	stop := func() {
		if out, err := exec.Command("bash", script, "stop", dir).CombinedOutput(); err != nil {
			t.Errorf("stopping the cluster: %v\n%s", err, out)
		}
	}
	t.Cleanup(stop)

	const ttl = 30 * time.Second
	clock := newTestClock()
	var queries atomic.Int64
	s, err := openPostgresWith(dsn+"&connect_timeout=2", "r", nil, sqlOptions{flushEvery: noAutoFlush, cacheTTL: ttl,
		now: clock.Now, listenBackoff: 10 * time.Millisecond, listenBackoffMax: 100 * time.Millisecond,
		queryHook: func() { queries.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	seed(t, cachedStore{s, &queries})
	for _, rc := range requestReads {
		if err := rc.call(s); err != nil {
			t.Fatal(err)
		}
	}

	stop()
	waitFor(t, 5*time.Second, "the listener noticing the outage", func() bool { return s.listenPID.Load() == 0 })
	clock.Advance(ttl - time.Nanosecond)
	for _, rc := range requestReads {
		if err := rc.call(s); err != nil {
			t.Errorf("%s cached, server down: %v; want the cached answer", rc.name, err)
		}
	}
	if _, err := s.LookupToken(bg, DigestOf("other")); !errors.Is(err, ErrUnavailable) {
		t.Errorf("LookupToken(other), server down: %v; want ErrUnavailable", err)
	}
	clock.Advance(time.Nanosecond)
	for _, rc := range requestReads {
		if err := rc.call(s); !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s after the TTL, server down: %v; want ErrUnavailable", rc.name, err)
		}
	}
}

// TestAcquireCacheTTL: the handler's cache_ttl reaches the store through
// Config.CacheTTL; a config sharing the store (a reload) sets its TTL, and
// a store opened without one (the CLI's) has no cache.
func TestAcquireCacheTTL(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.db")
	first := Config{Type: TypeSQLite, Path: path, Realm: "r", CacheTTL: 30 * time.Second}
	s, err := Acquire(first, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer Release(first)
	sq := s.(*SQLStore)
	if sq.cache == nil || time.Duration(sq.cache.ttl.Load()) != 30*time.Second {
		t.Fatalf("Acquire with CacheTTL 30s: cache %v", sq.cache)
	}
	reload := first
	reload.CacheTTL = 5 * time.Second
	again, err := Acquire(reload, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer Release(reload)
	if again != s {
		t.Fatal("a new cache_ttl opened a second store")
	}
	if got := time.Duration(sq.cache.ttl.Load()); got != 5*time.Second {
		t.Errorf("after a config with cache_ttl 5s shares the store: TTL %v", got)
	}

	cli, err := Open(Config{Type: TypeSQLite, Path: path, Realm: "r"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if c := cli.(*SQLStore).cache; c != nil {
		t.Error("a store opened with no CacheTTL caches")
	}
}
