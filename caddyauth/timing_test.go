package caddyauth

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// TestNoUserEnumerationByTiming sends Basic attempts to the test endpoint
// of a real (in-process) Caddy, alternating an unknown user and a known
// user with a wrong token, and compares the medians of their response
// times (issue 6: within 10%). Every attempt comes from an address of its
// own, so that the lockout, on as deployed, counts but never challenges,
// and both kinds take the path an attacker probing names would see.
//
// The ratios are logged for BENCHMARKS.md; the assertion is loose (the
// machines are shared and noisy), wide enough never to flake, narrow
// enough to catch a path that answers for unknown users without looking
// anything up, or one that does extra work for known ones.
func TestNoUserEnumerationByTiming(t *testing.T) {
	f := newFixture(t, time.Now())
	tester := startCaddy(t, lockoutCaddyfile(t, f.path, ""))
	// A well-formed token with a correct checksum that no one holds:
	// it gets past the checksum to the store look-up, as a real guess
	// would.
	wrong, err := tokenstore.GenerateSecret(tokenstore.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	compareTimings(t, tester, 2000, basicAuth("alice", wrong), basicAuth("nobody-here", wrong))
}

// TestNoUserEnumerationByTimingWithImportedHashes is the same in a realm
// with credentials imported by bcrypt hash: a wrong password for a user
// with one costs a bcrypt comparison, and an unknown user's attempt must
// cost one too, at the realm's own cost (here bcrypt's lowest, 4, to keep
// the test short; fewer attempts for the same reason).
func TestNoUserEnumerationByTimingWithImportedHashes(t *testing.T) {
	f := newFixture(t, time.Now())
	var tokens []tokenstore.Token
	for _, user := range []string{"alice", "dave"} {
		hash, err := bcrypt.GenerateFromPassword([]byte(user+"'s legacy password"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, tokenstore.Token{ID: "legacy-" + user, User: user, Scope: tokenstore.ScopeReadWrite,
			Hash: "bcrypt:" + string(hash), Created: time.Now().Add(-time.Hour)})
	}
	f.write(t, map[string]any{"version": 1, "tokens": tokens})
	tester := startCaddy(t, lockoutCaddyfile(t, f.path, ""))
	compareTimings(t, tester, 150, basicAuth("alice", "a wrong password"), basicAuth("nobody-here", "a wrong password"))
}

// compareTimings sends attempts Basic requests with known and with
// unknown, interleaved, each from a client address of its own, checks
// that each is refused as an invalid token, and compares the medians.
func compareTimings(t *testing.T, tester *caddytest.Tester, attempts int, known, unknown string) {
	t.Helper()
	const failure = `{"isSuccessfulAuthentication":false,"authenticationFailureDetails":"Token is invalid, has been revoked or expired"}`
	kinds := []string{known, unknown}
	durations := make([][]time.Duration, len(kinds))
	for i := range attempts {
		// Interleaved, so that whatever else the machine does weighs on
		// both kinds alike.
		for k, authz := range kinds {
			ip := fmt.Sprintf("198.18.%d.%d", (i*2+k)/256, (i*2+k)%256)
			start := time.Now()
			resp, body := call(t, tester, "GET", DefaultTestEndpoint, authz, from(ip))
			durations[k] = append(durations[k], time.Since(start))
			if resp.StatusCode != 200 || body != failure {
				t.Fatalf("attempt %d of kind %d: %d %s", i, k, resp.StatusCode, body)
			}
		}
	}
	medians := make([]time.Duration, len(kinds))
	for k := range kinds {
		slices.Sort(durations[k])
		medians[k] = durations[k][len(durations[k])/2]
	}
	ratio := float64(medians[1]) / float64(medians[0])
	t.Logf("test endpoint, %d Basic attempts each: median %v for a known user with a wrong secret, %v for an unknown user: ratio %.3f",
		attempts, medians[0], medians[1], ratio)
	if ratio < 0.8 || ratio > 1.25 {
		t.Errorf("an unknown user's median response time is %.2f times a known user's: the timing tells users apart", ratio)
	}
}
