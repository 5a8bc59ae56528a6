package tokenstore

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// The SQL stores' look-up cache. The request path asks the store for a
// token by digest, then for its user, and for Basic requests for the
// user's slow-hash tokens and whether the realm has any; without a cache
// each of those is a database round trip. With one, a warm cache answers
// them from memory.
//
// Answers are trusted for at most the cache TTL (the handler's cache_ttl),
// counted from when the query began. "Not found" answers are cached as
// well, so that a flood of random tokens reaches the database at most once
// per distinct token per TTL; they are kept in a bounded set, the oldest
// evicted first, since their keys are chosen by whoever sends requests.
// Found answers need no bound: there are only as many as the store holds.
// Errors are never cached: with the database down, a cached answer is
// served until it expires, anything else fails with ErrUnavailable.
//
// While the store cannot hear of other servers' writes (its PostgreSQL
// listener is known to be lost, see sqlwatch.go), an answer is served
// without asking the database only for a short while after its query
// began (see blinded); after that the database is asked, and only if it
// cannot answer is the cached answer served, until it expires.
//
// Concurrent misses for one key share one query. A write through the store
// (and, for PostgreSQL, a notification of a write by another server; for
// SQLite, a commit by another connection) clears the whole cache: writes
// are rare, and clearing all is simpler than knowing every entry a change
// touches (a revoked user's tokens, the slow-hash flag, …). Each clear
// starts a new generation: a query begun before it neither fills the
// cache after it nor is shared with callers arriving after it, so that a
// change is never hidden by an answer read before it.

// Cache defaults.
const (
	// defaultNegativeMax bounds the cached "not found" answers.
	defaultNegativeMax = 100_000
	// cacheQueryTimeout bounds a look-up shared by several requests: it
	// runs detached from the request that started it, so that one
	// client going away does not fail the others waiting for it.
	cacheQueryTimeout = 10 * time.Second
)

type cacheEntry struct {
	val     any   // a T of the look-up
	err     error // nil, or ErrNotFound
	expires time.Time
	neg     bool // a "not found" answer, counted against the bound

	// began is when the query that read it began.
	began time.Time
}

// lookupCache is a store's look-up cache. A nil *lookupCache caches
// nothing.
type lookupCache struct {
	now    func() time.Time
	ttl    atomic.Int64 // a time.Duration
	negMax int
	group  singleflight.Group

	hits, misses atomic.Int64

	// blind, while the store cannot hear of other servers' writes, is
	// how long after its query began an answer is served without asking
	// the database; zero while it can. A time.Duration.
	blind atomic.Int64

	mu      sync.Mutex
	gen     uint64
	entries map[string]*cacheEntry
	// negRing holds the keys of negative entries in the order they were
	// added; once full, each new one evicts the oldest.
	negRing []string
	negNext int
}

func newLookupCache(ttl time.Duration, negMax int, now func() time.Time) *lookupCache {
	if now == nil {
		now = time.Now
	}
	if negMax <= 0 {
		negMax = defaultNegativeMax
	}
	c := &lookupCache{now: now, negMax: negMax, entries: make(map[string]*cacheEntry)}
	c.ttl.Store(int64(ttl))
	return c
}

// setTTL changes how long answers are trusted; a change clears the cache.
func (c *lookupCache) setTTL(ttl time.Duration) {
	if c == nil || ttl <= 0 {
		return
	}
	if time.Duration(c.ttl.Swap(int64(ttl))) != ttl {
		c.clear()
	}
}

// clear forgets every answer and starts a new generation.
func (c *lookupCache) clear() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.entries = make(map[string]*cacheEntry)
	c.negRing = nil
	c.negNext = 0
}

// blinded tells the cache that the store can no longer hear of other
// servers' writes: until watched, an answer is served without asking the
// database only within d after its query began.
func (c *lookupCache) blinded(d time.Duration) {
	if c != nil {
		c.blind.Store(int64(d))
	}
}

// watched tells the cache that the store hears of other servers' writes
// again. It clears the cache (writes made meanwhile went unheard) before
// trusting answers for the TTL again.
func (c *lookupCache) watched() {
	if c == nil {
		return
	}
	c.clear()
	c.blind.Store(0)
}

// trusts reports whether e may be served at now without asking the
// database.
func (c *lookupCache) trusts(e cacheEntry, now time.Time) bool {
	blind := time.Duration(c.blind.Load())
	return blind == 0 || now.Before(e.began.Add(blind))
}

// get returns key's live entry, if any, and the current generation.
func (c *lookupCache) get(key string, now time.Time) (cacheEntry, bool, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok || !now.Before(e.expires) {
		return cacheEntry{}, false, c.gen
	}
	return *e, true, c.gen
}

// put stores an answer read in generation gen, unless the cache was
// cleared since.
func (c *lookupCache) put(key string, gen uint64, e cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	old, had := c.entries[key]
	c.entries[key] = &e
	if !e.neg || (had && old.neg) {
		return
	}
	if len(c.negRing) < c.negMax {
		c.negRing = append(c.negRing, key)
		return
	}
	evict := c.negRing[c.negNext]
	if ev, ok := c.entries[evict]; ok && ev.neg && evict != key {
		delete(c.entries, evict)
	}
	c.negRing[c.negNext] = key
	c.negNext = (c.negNext + 1) % c.negMax
}

// size returns the number of entries and of negative ones, for tests.
func (c *lookupCache) size() (all, neg int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		if e.neg {
			neg++
		}
	}
	return len(c.entries), neg
}

// cachedLookup answers key from s's cache or, on a miss, with load, whose
// answer it caches when it is one (a value, or ErrNotFound) rather than a
// failure. negative says whether an answer is a "not found". Concurrent
// misses of one key in one generation share one load.
func cachedLookup[T any](ctx context.Context, s *SQLStore, key string,
	load func(context.Context) (T, error), negative func(T, error) bool) (T, error) {
	c := s.cache
	if c == nil {
		return load(ctx)
	}
	start := c.now()
	e, ok, gen := c.get(key, start)
	if ok && c.trusts(e, start) {
		c.hits.Add(1)
		v, _ := e.val.(T)
		return v, e.err
	}
	c.misses.Add(1)
	ch := c.group.DoChan(strconv.FormatUint(gen, 10)+":"+key, func() (any, error) {
		began := c.now()
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cacheQueryTimeout)
		defer cancel()
		v, err := load(qctx)
		if err == nil || errors.Is(err, ErrNotFound) {
			e := cacheEntry{val: v, err: err, neg: negative(v, err), began: began,
				expires: began.Add(time.Duration(c.ttl.Load()))}
			if err != nil {
				e.err = ErrNotFound
			}
			c.put(key, gen, e)
		}
		return v, err
	})
	select {
	case r := <-ch:
		if errors.Is(r.Err, ErrUnavailable) {
			// The database cannot answer: an answer not yet expired is
			// served, as SPEC §4 allows during an outage.
			if e, ok, _ := c.get(key, c.now()); ok {
				v, _ := e.val.(T)
				return v, e.err
			}
		}
		v, _ := r.Val.(T)
		return v, r.Err
	case <-ctx.Done():
		var zero T
		return zero, s.unavailable("waiting for a look-up", ctx.Err())
	}
}
