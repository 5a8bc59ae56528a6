package captcha

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// clock is a swappable clock for tests.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func settings(mod func(*Settings)) Settings {
	s := (*Config)(nil).Settings()
	if mod != nil {
		mod(&s)
	}
	return s
}

var (
	home    = netip.MustParseAddr("192.0.2.10")
	away    = netip.MustParseAddr("198.51.100.20")
	another = netip.MustParseAddr("203.0.113.30")
)

func TestConcurrentFailuresAreCountedExactly(t *testing.T) {
	t.Parallel()
	for _, attempts := range []int{50, 200} {
		l := NewLockout(settings(nil), nil, newClock().Now)
		var judged, refused atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range attempts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if l.Fail("alice", home) {
					refused.Add(1)
				} else {
					judged.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		if judged.Load() != DefaultMaxFailures || refused.Load() != int64(attempts-DefaultMaxFailures) {
			t.Fatalf("%d attempts: %d judged, %d refused; want %d judged", attempts, judged.Load(), refused.Load(), DefaultMaxFailures)
		}
		st := l.State()
		if len(st.Challenges) != 1 || st.Challenges[0].User != "alice" || st.Challenges[0].IP != home {
			t.Errorf("challenges = %+v", st.Challenges)
		}
		// The user's count became the challenge; the IP counted exactly
		// the judged attempts.
		if len(st.Counters) != 1 || st.Counters[0].User != "" || st.Counters[0].IP != home || st.Counters[0].Failures != DefaultMaxFailures {
			t.Errorf("counters = %+v, want only the IP's, at %d", st.Counters, DefaultMaxFailures)
		}
	}
}

func TestChallengeByKey(t *testing.T) {
	t.Parallel()
	t.Run("user_ip", func(t *testing.T) {
		l := NewLockout(settings(nil), nil, newClock().Now)
		for i := 0; i < DefaultMaxFailures; i++ {
			if l.Fail("alice", away) {
				t.Fatalf("attempt %d refused before the challenge", i+1)
			}
		}
		if !l.Challenged("alice", away) || !l.Succeed("alice", away) {
			t.Error("the attacker's address is not challenged")
		}
		// An attacker elsewhere cannot lock alice out at home.
		if l.Challenged("alice", home) || l.Succeed("alice", home) {
			t.Error("alice is challenged at her own address")
		}
		if l.Challenged("bob", away) {
			t.Error("another user is challenged")
		}
	})
	t.Run("user", func(t *testing.T) {
		l := NewLockout(settings(func(s *Settings) { s.Key = KeyUser }), nil, newClock().Now)
		for _, ip := range []netip.Addr{away, another, away, another, away} {
			l.Fail("alice", ip)
		}
		if !l.Challenged("alice", home) {
			t.Error("key user: alice not challenged from a third address")
		}
		if c := l.State().Challenges; len(c) != 1 || c[0].IP.IsValid() {
			t.Errorf("key user challenge = %+v, want one with no IP", c)
		}
	})
	t.Run("success resets the count", func(t *testing.T) {
		l := NewLockout(settings(nil), nil, newClock().Now)
		for i := 0; i < DefaultMaxFailures-1; i++ {
			l.Fail("alice", home)
		}
		if l.Succeed("alice", home) {
			t.Fatal("refused before any challenge")
		}
		for i := 0; i < DefaultMaxFailures-1; i++ {
			l.Fail("alice", home)
		}
		if l.Challenged("alice", home) {
			t.Error("challenged although a success came between the failures")
		}
	})
	t.Run("max_failures 0 disables", func(t *testing.T) {
		l := NewLockout(settings(func(s *Settings) { s.MaxFailures = 0 }), nil, newClock().Now)
		for i := 0; i < 100; i++ {
			if l.Fail("alice", netip.AddrFrom4([4]byte{10, 0, byte(i / 250), byte(i % 250)})) {
				t.Fatal("refused with challenges disabled")
			}
		}
		if l.Challenged("alice", home) {
			t.Error("challenged with max_failures 0")
		}
	})
}

func TestResetAfter(t *testing.T) {
	t.Parallel()
	t.Run("challenge expires", func(t *testing.T) {
		c := newClock()
		l := NewLockout(settings(nil), nil, c.Now)
		for i := 0; i < DefaultMaxFailures; i++ {
			l.Fail("alice", home)
		}
		c.Advance(DefaultResetAfter - time.Second)
		if !l.Challenged("alice", home) {
			t.Fatal("challenge lapsed early")
		}
		c.Advance(time.Second)
		if l.Challenged("alice", home) || l.Succeed("alice", home) {
			t.Error("challenge still active after reset_after")
		}
	})
	t.Run("count expires", func(t *testing.T) {
		c := newClock()
		l := NewLockout(settings(nil), nil, c.Now)
		for i := 0; i < DefaultMaxFailures-1; i++ {
			l.Fail("alice", home)
		}
		c.Advance(DefaultResetAfter)
		l.Fail("alice", home)
		if l.Challenged("alice", home) {
			t.Error("an expired run of failures still counted")
		}
		if got := l.State().Counters; len(got) == 0 || got[len(got)-1].Failures != 1 {
			t.Errorf("counters = %+v, want alice at 1", got)
		}
	})
	t.Run("0 is never", func(t *testing.T) {
		c := newClock()
		l := NewLockout(settings(func(s *Settings) { s.ResetAfter = 0 }), nil, c.Now)
		for i := 0; i < DefaultMaxFailures; i++ {
			l.Fail("alice", home)
			c.Advance(24 * time.Hour)
		}
		c.Advance(365 * 24 * time.Hour)
		if !l.Challenged("alice", home) {
			t.Error("a challenge with reset_after 0 lapsed")
		}
		if st := l.State(); len(st.Challenges) != 1 || !st.Challenges[0].Expires.IsZero() {
			t.Errorf("challenge = %+v, want no expiry", st.Challenges)
		}
	})
	t.Run("expire forgets lapsed state", func(t *testing.T) {
		c := newClock()
		l := NewLockout(settings(nil), nil, c.Now)
		for i := 0; i < DefaultIPMaxFailures; i++ {
			l.Fail("", away)
		}
		for i := 0; i < DefaultMaxFailures; i++ {
			l.Fail("alice", home)
		}
		c.Advance(DefaultResetAfter)
		l.expire()
		l.mu.RLock()
		n := len(l.counts) + len(l.challenges) + len(l.ipCounts) + len(l.bans)
		l.mu.RUnlock()
		if n != 0 {
			t.Errorf("%d lapsed entries kept in memory", n)
		}
	})
}

func TestIPBan(t *testing.T) {
	t.Parallel()
	c := newClock()
	l := NewLockout(settings(nil), nil, c.Now)
	// Any mix of users and schemes counts for the address.
	for i := 0; i < DefaultIPMaxFailures; i++ {
		user := []string{"", "alice", "bob", "carol"}[i%4]
		l.Fail(user, away)
	}
	until, banned := l.Banned(away)
	if !banned || !until.Equal(c.Now().Add(DefaultIPBan)) {
		t.Fatalf("Banned = %v, %v; want until %v", until, banned, c.Now().Add(DefaultIPBan))
	}
	if _, banned := l.Banned(home); banned {
		t.Error("another address is banned")
	}
	c.Advance(DefaultIPBan)
	if _, banned := l.Banned(away); banned {
		t.Error("ban outlived ip_ban")
	}

	t.Run("ip_max_failures 0 disables", func(t *testing.T) {
		l := NewLockout(settings(func(s *Settings) { s.IPMaxFailures = 0 }), nil, newClock().Now)
		for i := 0; i < 1000; i++ {
			l.Fail("", away)
		}
		if _, banned := l.Banned(away); banned {
			t.Error("banned with ip_max_failures 0")
		}
	})
}

func TestClears(t *testing.T) {
	t.Parallel()
	l := NewLockout(settings(nil), nil, newClock().Now)
	for _, ip := range []netip.Addr{home, away} {
		for i := 0; i < DefaultMaxFailures; i++ {
			l.Fail("alice", ip)
		}
	}
	for i := 0; i < DefaultMaxFailures; i++ {
		l.Fail("bob", home)
	}
	l.Fail("carol", home)

	if !l.ClearChallenge("alice", away) || l.Challenged("alice", away) || !l.Challenged("alice", home) {
		t.Error("ClearChallenge did not clear exactly alice at that address")
	}
	if l.ClearChallenge("alice", away) {
		t.Error("a second ClearChallenge reported an active challenge")
	}
	for i := 0; i < DefaultMaxFailures; i++ {
		l.Fail("alice", away)
	}
	if n := l.ClearUser("alice"); n != 2 {
		t.Errorf("ClearUser = %d, want 2", n)
	}
	if l.Challenged("alice", home) || l.Challenged("alice", away) || !l.Challenged("bob", home) {
		t.Error("ClearUser cleared the wrong challenges")
	}

	st := l.State()
	var users []string
	for _, ctr := range st.Counters {
		if ctr.User != "" {
			users = append(users, ctr.User)
		}
	}
	if strings.Join(users, ",") != "carol" {
		t.Errorf("user counters after clears: %q, want carol's only", users)
	}

	for i := 0; i < DefaultIPMaxFailures; i++ {
		l.Fail("", another)
	}
	if !l.ClearIP(another) {
		t.Error("ClearIP found no ban")
	}
	if _, banned := l.Banned(another); banned {
		t.Error("still banned after ClearIP")
	}
	for _, ctr := range l.State().Counters {
		if ctr.IP == another {
			t.Errorf("ClearIP kept the address's count: %+v", ctr)
		}
	}
}

func TestLockoutLogs(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.InfoLevel)
	c := newClock()
	l := NewLockout(settings(nil), zap.New(core), c.Now)
	for i := 0; i < DefaultMaxFailures; i++ {
		l.Fail("alice", home)
	}
	l.ClearChallenge("alice", home)
	for i := 0; i < DefaultIPMaxFailures; i++ {
		l.Fail("", away)
	}
	c.Advance(DefaultIPBan)
	l.expire()

	want := []struct{ msg, user, ip, reason string }{
		{"CAPTCHA challenge started", "alice", home.String(), "too many failed attempts"},
		{"CAPTCHA challenge cleared", "alice", home.String(), "solved on the unlock page"},
		{"IP address banned", "", away.String(), "too many failed attempts"},
		{"IP address ban cleared", "", away.String(), "expired"},
	}
	entries := logs.All()
	if len(entries) != len(want) {
		t.Fatalf("%d log lines, want %d: %v", len(entries), len(want), entries)
	}
	for i, w := range want {
		e := entries[i]
		fields := e.ContextMap()
		if e.Message != w.msg || e.Level != zapcore.InfoLevel || fields["client_ip"] != w.ip || fields["reason"] != w.reason ||
			(w.user != "" && fields["user"] != w.user) {
			t.Errorf("line %d = %s %v; want %+v", i, e.Message, fields, w)
		}
	}
}

// countingStorage is Caddy's file storage, counting writes.
type countingStorage struct {
	*certmagic.FileStorage
	stores, deletes atomic.Int64
}

func (s *countingStorage) Store(ctx context.Context, key string, value []byte) error {
	s.stores.Add(1)
	return s.FileStorage.Store(ctx, key, value)
}

func (s *countingStorage) Delete(ctx context.Context, key string) error {
	s.deletes.Add(1)
	return s.FileStorage.Delete(ctx, key)
}

// settle waits until l's storage goroutine has written everything queued.
func settle(t *testing.T, l *Lockout) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for l.persist.pending.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("storage writes still queued after 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestPersistence(t *testing.T) {
	t.Parallel()
	storage := &countingStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	c := newClock()

	// Server A starts a challenge and a ban; failed attempts before them
	// write nothing.
	a := NewLockout(settings(nil), nil, c.Now)
	a.Persist("default", storage)
	defer a.Close()
	for i := 0; i < DefaultMaxFailures-1; i++ {
		a.Fail("alice", home)
	}
	settle(t, a)
	if n := storage.stores.Load(); n != 0 {
		t.Fatalf("%d storage writes before any challenge started", n)
	}
	a.Fail("alice", home)
	for i := 0; i < DefaultIPMaxFailures; i++ {
		a.Fail("", away)
	}
	settle(t, a)
	if n := storage.stores.Load(); n != 2 {
		t.Fatalf("%d storage writes, want 2 (one challenge, one ban)", n)
	}

	// A banned address is answered from memory: no more writes.
	for i := 0; i < 1000; i++ {
		if _, banned := a.Banned(away); !banned {
			t.Fatal("not banned")
		}
	}
	settle(t, a)
	if n := storage.stores.Load(); n != 2 {
		t.Errorf("%d storage writes after requests from a banned address, want still 2", n)
	}

	// Server B (or A after a restart) shares the storage: it loads both.
	b := NewLockout(settings(nil), nil, c.Now)
	b.Persist("default", storage)
	defer b.Close()
	if !b.Challenged("alice", home) {
		t.Error("server B does not see the challenge")
	}
	if _, banned := b.Banned(away); !banned {
		t.Error("server B does not see the ban")
	}
	// Another realm does not.
	other := NewLockout(settings(nil), nil, c.Now)
	other.Persist("other", storage)
	defer other.Close()
	if other.Challenged("alice", home) {
		t.Error("realm other sees realm default's challenge")
	}

	// A clears the challenge; B drops it at its next sync.
	a.ClearChallenge("alice", home)
	settle(t, a)
	b.persist.sync()
	if b.Challenged("alice", home) {
		t.Error("server B still holds a challenge cleared on server A")
	}
	// B clears the ban; A drops it.
	b.ClearIP(away)
	settle(t, b)
	a.persist.sync()
	if _, banned := a.Banned(away); banned {
		t.Error("server A still holds a ban cleared on server B")
	}

	// A challenge that lapses is deleted from storage when noticed.
	for i := 0; i < DefaultMaxFailures; i++ {
		a.Fail("bob", home)
	}
	settle(t, a)
	c.Advance(DefaultResetAfter)
	a.expire()
	settle(t, a)
	keys, _ := storage.List(context.Background(), "api_token_auth/default/challenges", false)
	if len(keys) != 0 {
		t.Errorf("lapsed challenge still in storage: %v", keys)
	}
}

// A server that finds a lapsed challenge or ban in storage (its starter
// was stopped before it lapsed) deletes it rather than loading it.
func TestPersistenceDropsLapsedEntries(t *testing.T) {
	t.Parallel()
	storage := &countingStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	c := newClock()
	a := NewLockout(settings(nil), nil, c.Now)
	a.Persist("default", storage)
	for i := 0; i < DefaultMaxFailures; i++ {
		a.Fail("alice", home)
	}
	for i := 0; i < DefaultIPMaxFailures; i++ {
		a.Fail("", away)
	}
	a.Close() // writes what is queued, as a stopping server does

	c.Advance(DefaultResetAfter)
	b := NewLockout(settings(nil), nil, c.Now)
	b.Persist("default", storage)
	defer b.Close()
	settle(t, b)
	if b.Challenged("alice", home) {
		t.Error("a lapsed challenge was loaded")
	}
	if _, banned := b.Banned(away); banned {
		t.Error("a lapsed ban was loaded")
	}
	for _, dir := range []string{"challenges", "bans"} {
		keys, _ := storage.List(context.Background(), "api_token_auth/default/"+dir, false)
		if len(keys) != 0 {
			t.Errorf("lapsed %s still in storage: %v", dir, keys)
		}
	}
}
