package caddyauth

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// The collectors are built once, for the process, and registered into the
// registry of every config that has the handler. Their labels are the
// realm and fixed words, never a user or an IP address.
var (
	requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "api_token_auth",
		Name:      "requests_total",
		Help:      "Requests checked by api_token_auth, by realm and result (ok or the failure's reason code).",
	}, []string{"realm", "result"})

	storeDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy",
		Subsystem: "api_token_auth",
		Name:      "store_operation_duration_seconds",
		Help:      "Time taken by token store operations, by realm, store kind and operation.",
		Buckets:   []float64{1e-6, 1e-5, 1e-4, 1e-3, 5e-3, 0.025, 0.1, 0.5, 2.5},
	}, []string{"realm", "store", "operation"})

	cacheLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "api_token_auth",
		Name:      "cache_lookups_total",
		Help:      "Look-ups in api_token_auth's caches, by realm, cache and result (hit or miss).",
	}, []string{"realm", "cache", "result"})

	challengesDesc = prometheus.NewDesc("caddy_api_token_auth_active_challenges",
		"CAPTCHA challenges in force, by realm.", []string{"realm"}, nil)
	bansDesc = prometheus.NewDesc("caddy_api_token_auth_active_bans",
		"Client IP addresses banned for failures, by realm.", []string{"realm"}, nil)
	storeCacheDesc = prometheus.NewDesc("caddy_api_token_auth_store_cache_lookups_total",
		"Look-ups answered by a SQL store's cache (hit) or its database (miss), by realm.",
		[]string{"realm", "result"}, nil)
)

// cacheStats is what a store with a look-up cache (the SQL stores) reports.
type cacheStats interface{ CacheStats() (hits, misses int64) }

// lockoutCollector reports the live realms' challenges and bans when
// scraped, so that no request path keeps a gauge up to date.
type lockoutCollector struct{}

func (lockoutCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- challengesDesc
	ch <- bansDesc
	ch <- storeCacheDesc
}

// Collect also reports the SQL stores' cache counters, which the stores
// keep themselves (they count on the request path with atomics).
func (lockoutCollector) Collect(ch chan<- prometheus.Metric) {
	for _, realm := range Realms() {
		challenges, bans := realm.Lockout.Active()
		ch <- prometheus.MustNewConstMetric(challengesDesc, prometheus.GaugeValue, float64(challenges), realm.Name)
		ch <- prometheus.MustNewConstMetric(bansDesc, prometheus.GaugeValue, float64(bans), realm.Name)
		if cs, ok := realm.Store.(cacheStats); ok {
			hits, misses := cs.CacheStats()
			ch <- prometheus.MustNewConstMetric(storeCacheDesc, prometheus.CounterValue, float64(hits), realm.Name, "hit")
			ch <- prometheus.MustNewConstMetric(storeCacheDesc, prometheus.CounterValue, float64(misses), realm.Name, "miss")
		}
	}
}

// registerMetrics adds the collectors to a config's registry (once).
func registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{requestsTotal, storeDuration, cacheLookups, lockoutCollector{}} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

// realmMetrics are a realm's series, resolved once at Provision so that
// the request path only increments.
type realmMetrics struct {
	results                   [len(outcomes)]prometheus.Counter
	slowHashHit, slowHashMiss prometheus.Counter
	lookupToken, lookupUser   prometheus.Observer
	lookupBasic               prometheus.Observer
	// timed is whether store operations are timed: not for the file
	// store, whose look-ups are reads of a map in memory, cheaper than the
	// two clock readings that would time them.
	timed bool
}

func newRealmMetrics(realm, storeKind string) *realmMetrics {
	m := &realmMetrics{
		timed:        storeKind != tokenstore.TypeFile,
		slowHashHit:  cacheLookups.WithLabelValues(realm, "slow_hash", "hit"),
		slowHashMiss: cacheLookups.WithLabelValues(realm, "slow_hash", "miss"),
	}
	if m.timed {
		m.lookupToken = storeDuration.WithLabelValues(realm, storeKind, "lookup_token")
		m.lookupUser = storeDuration.WithLabelValues(realm, storeKind, "lookup_user")
		m.lookupBasic = storeDuration.WithLabelValues(realm, storeKind, "lookup_basic")
	}
	for o := range outcomes {
		m.results[o] = requestsTotal.WithLabelValues(realm, outcomes[o].code)
	}
	return m
}

// start returns when a store operation starts, if store operations are
// timed.
func (m *realmMetrics) start() time.Time {
	if !m.timed {
		return time.Time{}
	}
	return time.Now()
}

// observe records the time since start in o, if store operations are
// timed.
func (m *realmMetrics) observe(o prometheus.Observer, start time.Time) {
	if m.timed {
		o.Observe(time.Since(start).Seconds())
	}
}
