package captcha

import (
	"context"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
	"go.uber.org/zap"
)

// Lockout is one realm's failure counts, CAPTCHA challenges and IP bans.
// Everything a request asks of it is answered from memory; challenges and
// bans are also written to Caddy's storage when they start or end (never
// per attempt), so that they outlive restarts and are shared by servers
// that share the storage. With an SQL token store, failures are counted
// in its database and challenges and bans kept there (see dbpersist.go),
// shared by the servers that share the database.
type Lockout struct {
	settings atomic.Pointer[Settings]
	logger   atomic.Pointer[zap.Logger]
	clock    atomic.Pointer[func() time.Time]

	mu         sync.RWMutex
	counts     map[string]*failureCount // by lockout key
	challenges map[string]*Challenge    // by lockout key
	ipCounts   map[netip.Addr]*failureCount
	bans       map[netip.Addr]*Ban

	// persist is set when challenges and bans are kept in storage.
	persist *persister
	// db is set when counts, challenges and bans are kept in an SQL token
	// store's database (see dbpersist.go); then persist is nil.
	db *dbBackend
}

// failureCount is a run of consecutive failures.
type failureCount struct {
	n    int
	last time.Time
}

// Challenge is a CAPTCHA challenge on a lockout key: the user's Basic
// attempts from that key are refused until it is solved, cleared, or
// expires.
type Challenge struct {
	User string `json:"user"`
	// IP is the client address of a user_ip key; invalid for key user.
	IP      netip.Addr `json:"ip,omitzero"`
	Started time.Time  `json:"started"`
	// Expires is when the challenge lapses by itself; zero for never.
	Expires time.Time `json:"expires,omitzero"`

	stored bool // written to storage (or read from it)
}

// Ban is a client IP's ban after too many failures.
type Ban struct {
	IP      netip.Addr `json:"ip"`
	Started time.Time  `json:"started"`
	Until   time.Time  `json:"until"`

	stored bool
}

func (c *Challenge) activeAt(now time.Time) bool {
	return c.Expires.IsZero() || now.Before(c.Expires)
}

func (b *Ban) activeAt(now time.Time) bool { return now.Before(b.Until) }

// NewLockout makes an empty lockout. now is the clock (time.Now outside
// tests).
func NewLockout(s Settings, logger *zap.Logger, now func() time.Time) *Lockout {
	l := &Lockout{
		counts:     make(map[string]*failureCount),
		challenges: make(map[string]*Challenge),
		ipCounts:   make(map[netip.Addr]*failureCount),
		bans:       make(map[netip.Addr]*Ban),
	}
	l.Configure(s, logger)
	l.SetClock(now)
	return l
}

// SetClock replaces the clock; tests use it to let time pass.
func (l *Lockout) SetClock(now func() time.Time) { l.clock.Store(&now) }

func (l *Lockout) now() time.Time { return (*l.clock.Load())() }

// Configure applies the settings of a (re)loaded config. State is kept.
func (l *Lockout) Configure(s Settings, logger *zap.Logger) {
	if logger == nil {
		logger = zap.NewNop()
	}
	l.settings.Store(&s)
	l.logger.Store(logger)
}

// Settings returns the settings in force.
func (l *Lockout) Settings() Settings { return *l.settings.Load() }

// key is what consecutive failures are counted per.
func (l *Lockout) key(user string, ip netip.Addr) string {
	var buf [keyBufSize]byte
	return string(l.appendKey(buf[:0], user, ip))
}

// keyBufSize fits the key of an IPv6 address and a typical user name, so
// that the look-ups every successful Basic request makes can build the key
// on the stack: a map index with string(bytes) does not allocate.
const keyBufSize = 64

// appendKey appends the lockout key of user at ip to dst.
func (l *Lockout) appendKey(dst []byte, user string, ip netip.Addr) []byte {
	if l.settings.Load().Key == KeyUser {
		return append(dst, user...)
	}
	// A user name may contain anything, an address never contains a NUL.
	dst = ip.AppendTo(dst)
	dst = append(dst, 0)
	return append(dst, user...)
}

// Banned reports whether ip is banned, and until when (SPEC §4 check 2).
func (l *Lockout) Banned(ip netip.Addr) (until time.Time, banned bool) {
	l.mu.RLock()
	b, ok := l.bans[ip]
	l.mu.RUnlock()
	if !ok || !b.activeAt(l.now()) {
		return time.Time{}, false
	}
	return b.Until, true
}

// Challenged reports whether user, at ip, is under a CAPTCHA challenge
// (SPEC §4 check 3; Basic only).
func (l *Lockout) Challenged(user string, ip netip.Addr) bool {
	var buf [keyBufSize]byte
	key := l.appendKey(buf[:0], user, ip)
	l.mu.RLock()
	c, ok := l.challenges[string(key)]
	l.mu.RUnlock()
	return ok && c.activeAt(l.now())
}

// Fail records a failed check 4 and reports whether the attempt must
// instead be answered as refused by the challenge (check 3): when a
// challenge started while the attempt was being judged. Counting and that
// decision are one atomic step, so that of N concurrent bad attempts
// exactly max_failures are judged before the challenge starts. user is ""
// for Bearer attempts, which count for the client IP only.
//
// With a database (PersistDB) the counting is the database's, atomic
// across every server sharing it.
func (l *Lockout) Fail(user string, ip netip.Addr) (challenged bool) {
	if d := l.db; d != nil {
		return l.failDB(d, user, ip)
	}
	return l.failMemory(user, ip)
}

// failMemory is Fail with the counts in memory.
func (l *Lockout) failMemory(user string, ip netip.Addr) (challenged bool) {
	s := l.settings.Load()
	now := l.now()
	var started *Challenge
	var banned *Ban
	l.mu.Lock()
	if user != "" && s.MaxFailures > 0 {
		key := l.key(user, ip)
		if c, ok := l.challenges[key]; ok && c.activeAt(now) {
			l.mu.Unlock()
			return true
		}
		n := bump(l.counts, key, now, s.ResetAfter)
		if n >= s.MaxFailures {
			delete(l.counts, key)
			started = &Challenge{User: user, Started: now}
			if s.Key == KeyUserIP {
				started.IP = ip
			}
			if s.ResetAfter > 0 {
				started.Expires = now.Add(s.ResetAfter)
			}
			l.challenges[key] = started
		}
	}
	if s.IPMaxFailures > 0 {
		if b, ok := l.bans[ip]; !ok || !b.activeAt(now) {
			n := bump(l.ipCounts, ip, now, s.ResetAfter)
			if n >= s.IPMaxFailures {
				delete(l.ipCounts, ip)
				banned = &Ban{IP: ip, Started: now, Until: now.Add(s.IPBan)}
				l.bans[ip] = banned
			}
		}
	}
	if l.persist != nil {
		if started != nil {
			started.stored = true
			l.persist.enqueue(storeChallenge(l.key(user, ip), *started))
		}
		if banned != nil {
			banned.stored = true
			l.persist.enqueue(storeBan(*banned))
		}
	}
	l.mu.Unlock()
	l.logStarts(s, user, ip, started, banned)
	return false
}

// logStarts logs a challenge and a ban that an attempt started.
func (l *Lockout) logStarts(s *Settings, user string, ip netip.Addr, started *Challenge, banned *Ban) {
	logger := l.logger.Load()
	if started != nil {
		logger.Info("CAPTCHA challenge started", zap.String("user", user), zap.String("client_ip", ip.String()),
			zap.String("reason", "too many failed attempts"), zap.Int("failures", s.MaxFailures), zap.Time("expires", started.Expires))
	}
	if banned != nil {
		logger.Info("IP address banned", zap.String("client_ip", ip.String()),
			zap.String("reason", "too many failed attempts"), zap.Int("failures", s.IPMaxFailures), zap.Time("until", banned.Until))
	}
}

// bump adds a failure to counts[key], restarting a run older than
// resetAfter, and returns the new count. l.mu must be held.
func bump[K comparable](counts map[K]*failureCount, key K, now time.Time, resetAfter time.Duration) int {
	c := counts[key]
	if c == nil {
		c = &failureCount{}
		counts[key] = c
	}
	if resetAfter > 0 && now.Sub(c.last) >= resetAfter {
		c.n = 0
	}
	c.n++
	c.last = now
	return c.n
}

// Succeed records that user, at ip, presented a valid token, and reports
// whether the attempt must be refused anyway because a challenge is
// active (it may have started while the attempt was being judged).
// Otherwise the key's failure count is reset.
func (l *Lockout) Succeed(user string, ip netip.Addr) (challenged bool) {
	var buf [keyBufSize]byte
	keyBytes := l.appendKey(buf[:0], user, ip)
	l.mu.RLock()
	c, isChallenged := l.challenges[string(keyBytes)]
	_, hasCount := l.counts[string(keyBytes)]
	l.mu.RUnlock()
	if !isChallenged && !hasCount {
		return false // the common case: no write lock, no allocation, no clock
	}
	now := l.now()
	if isChallenged && c.activeAt(now) {
		return true
	}
	if !hasCount {
		return false
	}
	key := string(keyBytes)
	l.mu.Lock()
	if c, ok := l.challenges[key]; ok && c.activeAt(now) {
		l.mu.Unlock()
		return true
	}
	delete(l.counts, key)
	l.mu.Unlock()
	// Only a key this server counted failures for costs a database write.
	if d := l.db; d != nil {
		d.write("resetting a failure count", func(ctx context.Context, db tokenstore.LockoutStore) error {
			return db.ResetFailures(ctx, userCountKey(key))
		})
	}
	return false
}

// ClearChallenge ends the challenge and failure count of user at ip (the
// unlock page). It reports whether a challenge was active.
func (l *Lockout) ClearChallenge(user string, ip netip.Addr) bool {
	key := l.key(user, ip)
	l.mu.Lock()
	c, ok := l.challenges[key]
	active := ok && c.activeAt(l.now())
	l.dropChallenge(key)
	delete(l.counts, key)
	l.mu.Unlock()
	if d := l.db; d != nil {
		d.write("clearing a challenge", func(ctx context.Context, db tokenstore.LockoutStore) error {
			return db.DeleteLockout(ctx, tokenstore.LockoutChallenge, key, userCountKey(key))
		})
	}
	if active {
		l.logger.Load().Info("CAPTCHA challenge cleared", zap.String("user", user),
			zap.String("client_ip", ip.String()), zap.String("reason", "solved on the unlock page"))
	}
	return active
}

// ClearUser ends every challenge and failure count of user, at every IP
// (an admin reset). It returns how many challenges it ended.
func (l *Lockout) ClearUser(user string) int {
	now := l.now()
	cleared := 0
	l.mu.Lock()
	for key, c := range l.challenges {
		if c.User == user {
			if c.activeAt(now) {
				cleared++
			}
			l.dropChallenge(key)
		}
	}
	for key := range l.counts {
		if key == user || keyUser(key) == user {
			delete(l.counts, key)
		}
	}
	l.mu.Unlock()
	if d := l.db; d != nil {
		d.write("clearing a user's challenges", func(ctx context.Context, db tokenstore.LockoutStore) error {
			return db.DeleteUserLockouts(ctx, user)
		})
	}
	if cleared > 0 {
		l.logger.Load().Info("CAPTCHA challenge cleared", zap.String("user", user),
			zap.Int("challenges", cleared), zap.String("reason", "reset by an administrator"))
	}
	return cleared
}

// keyUser returns the user part of a user_ip key, or "" for a user key.
func keyUser(key string) string {
	_, user, _ := strings.Cut(key, "\x00")
	return user
}

// ClearIP ends ip's ban and failure count (an admin reset). It reports
// whether a ban was active.
func (l *Lockout) ClearIP(ip netip.Addr) bool {
	l.mu.Lock()
	b, ok := l.bans[ip]
	active := ok && b.activeAt(l.now())
	l.dropBan(ip)
	delete(l.ipCounts, ip)
	l.mu.Unlock()
	if d := l.db; d != nil {
		d.write("clearing a ban", func(ctx context.Context, db tokenstore.LockoutStore) error {
			return db.DeleteLockout(ctx, tokenstore.LockoutBan, ip.String(), ipCountKey(ip))
		})
	}
	if active {
		l.logger.Load().Info("IP address ban cleared", zap.String("client_ip", ip.String()),
			zap.String("reason", "reset by an administrator"))
	}
	return active
}

// dropChallenge removes a challenge, from storage too. l.mu must be held.
func (l *Lockout) dropChallenge(key string) {
	c, ok := l.challenges[key]
	if !ok {
		return
	}
	delete(l.challenges, key)
	if l.persist != nil && c.stored {
		l.persist.enqueue(deleteChallenge(key))
	}
}

// dropBan removes a ban, from storage too. l.mu must be held.
func (l *Lockout) dropBan(ip netip.Addr) {
	b, ok := l.bans[ip]
	if !ok {
		return
	}
	delete(l.bans, ip)
	if l.persist != nil && b.stored {
		l.persist.enqueue(deleteBan(ip))
	}
}

// Active counts the challenges and bans in force, for metrics.
func (l *Lockout) Active() (challenges, bans int) {
	now := l.now()
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, c := range l.challenges {
		if c.activeAt(now) {
			challenges++
		}
	}
	for _, b := range l.bans {
		if b.activeAt(now) {
			bans++
		}
	}
	return challenges, bans
}

// Counter is one failure count, for listings.
type Counter struct {
	User     string     `json:"user,omitempty"`
	IP       netip.Addr `json:"ip,omitzero"`
	Failures int        `json:"failures"`
	Last     time.Time  `json:"last"`
}

// State is a snapshot of a lockout, for the admin API.
type State struct {
	Counters   []Counter   `json:"counters"`
	Challenges []Challenge `json:"challenges"`
	Bans       []Ban       `json:"bans"`
}

// State lists the live failure counts, challenges and bans, in a stable
// order.
func (l *Lockout) State() State {
	s := l.settings.Load()
	now := l.now()
	out := State{Counters: []Counter{}, Challenges: []Challenge{}, Bans: []Ban{}}
	l.mu.RLock()
	for key, c := range l.counts {
		if s.ResetAfter > 0 && now.Sub(c.last) >= s.ResetAfter {
			continue
		}
		ctr := Counter{User: key, Failures: c.n, Last: c.last}
		if u := keyUser(key); u != "" {
			ctr.User = u
			ctr.IP, _ = netip.ParseAddr(key[:len(key)-len(u)-1])
		}
		out.Counters = append(out.Counters, ctr)
	}
	for ip, c := range l.ipCounts {
		if s.ResetAfter > 0 && now.Sub(c.last) >= s.ResetAfter {
			continue
		}
		out.Counters = append(out.Counters, Counter{IP: ip, Failures: c.n, Last: c.last})
	}
	for _, c := range l.challenges {
		if c.activeAt(now) {
			out.Challenges = append(out.Challenges, *c)
		}
	}
	for _, b := range l.bans {
		if b.activeAt(now) {
			out.Bans = append(out.Bans, *b)
		}
	}
	l.mu.RUnlock()
	sort.Slice(out.Counters, func(i, j int) bool {
		a, b := out.Counters[i], out.Counters[j]
		if a.User != b.User {
			return a.User < b.User
		}
		return a.IP.Less(b.IP)
	})
	sort.Slice(out.Challenges, func(i, j int) bool {
		a, b := out.Challenges[i], out.Challenges[j]
		if a.User != b.User {
			return a.User < b.User
		}
		return a.IP.Less(b.IP)
	})
	sort.Slice(out.Bans, func(i, j int) bool { return out.Bans[i].IP.Less(out.Bans[j].IP) })
	return out
}

// expire forgets lapsed challenges, bans and counts, so that memory does
// not grow with every address that ever failed once. Lapsed challenges
// and bans are deleted from storage too: they have ended.
func (l *Lockout) expire() {
	s := l.settings.Load()
	now := l.now()
	var challenges []Challenge
	var challengeKeys []string
	var bans []Ban
	l.mu.Lock()
	for key, c := range l.challenges {
		if !c.activeAt(now) {
			challenges = append(challenges, *c)
			challengeKeys = append(challengeKeys, key)
			l.dropChallenge(key)
		}
	}
	for ip, b := range l.bans {
		if !b.activeAt(now) {
			bans = append(bans, *b)
			l.dropBan(ip)
		}
	}
	if s.ResetAfter > 0 {
		for key, c := range l.counts {
			if now.Sub(c.last) >= s.ResetAfter {
				delete(l.counts, key)
			}
		}
		for ip, c := range l.ipCounts {
			if now.Sub(c.last) >= s.ResetAfter {
				delete(l.ipCounts, ip)
			}
		}
	}
	l.mu.Unlock()
	if d := l.db; d != nil {
		for _, key := range challengeKeys {
			d.write("deleting a lapsed challenge", func(ctx context.Context, db tokenstore.LockoutStore) error {
				return db.DeleteLockout(ctx, tokenstore.LockoutChallenge, key, userCountKey(key))
			})
		}
		for _, b := range bans {
			d.write("deleting a lapsed ban", func(ctx context.Context, db tokenstore.LockoutStore) error {
				return db.DeleteLockout(ctx, tokenstore.LockoutBan, b.IP.String(), ipCountKey(b.IP))
			})
		}
	}
	logger := l.logger.Load()
	for _, c := range challenges {
		logger.Info("CAPTCHA challenge cleared", zap.String("user", c.User),
			zap.String("client_ip", addrString(c.IP)), zap.String("reason", "expired"))
	}
	for _, b := range bans {
		logger.Info("IP address ban cleared", zap.String("client_ip", b.IP.String()), zap.String("reason", "expired"))
	}
}

// addrString is ip as text for logs, or "" for no address (the invalid
// address of a user key).
func addrString(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.Unmap().String()
}
