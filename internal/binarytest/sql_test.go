//go:build unix

package binarytest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/internal/testdb"
)

// SPEC §8 and issue 5: a change made through one server's admin API
// applies on every server sharing the PostgreSQL store within 1 s.
const propagationLimit = time.Second

// Bounds of the polling in these tests.
const (
	pollInterval = 5 * time.Millisecond
	pollCap      = 2 * time.Second
)

const unavailableBody = `{"message":"Token store unavailable"}`

// TestTwoServersShareOnePostgres runs two real Caddy servers on one
// PostgreSQL database and measures how fast a change made through the admin
// API of one applies on the other (LISTEN/NOTIFY, SPEC §8).
func TestTwoServersShareOnePostgres(t *testing.T) {
	dsn := testdb.FreshPostgresDatabase(t)
	caddy := caddyBinary(t)
	// A long cache TTL: the other server only learns of a change through
	// the database's notifications, never by its cache running out.
	a := startPostgresCaddy(t, caddy, "a", dsn, "5m")
	b := startPostgresCaddy(t, caddy, "b", dsn, "5m")
	client := loopbackClient()

	const n = 100
	type tok struct{ id, secret string }
	tokens := make([]tok, n)
	for i := range tokens {
		v := a.createToken(t, client, fmt.Sprintf(`{"user":"alice","name":"prop-%d"}`, i))
		tokens[i] = tok{v.ID, v.Token}
	}
	// Warm B's cache: every token used once there.
	for i, tk := range tokens {
		if st, body := b.get(t, client, tk.secret); st != http.StatusOK || body != "hello alice" {
			t.Fatalf("token %d on B before revocation: %d %q, want 200", i, st, body)
		}
	}

	// Revoke each through A; poll B until it answers 401.
	var times []time.Duration
	stale := 0 // polls of B that still saw a success after A's DELETE
	for i, tk := range tokens {
		if st, body := b.get(t, client, tk.secret); st != http.StatusOK {
			t.Fatalf("token %d on B just before its revocation: %d %q", i, st, body)
		}
		start := time.Now()
		a.admin(t, client, http.MethodDelete, "/tokens/"+tk.id, "", http.StatusOK)
		d, ok := waitFor(t, start, func() bool {
			st, _ := b.get(t, client, tk.secret)
			if st == http.StatusOK {
				stale++
			}
			return st == http.StatusUnauthorized
		})
		if !ok {
			t.Errorf("token %d (%s) revoked through A: B still accepts it after %s", i, tk.id, pollCap)
		} else if d > propagationLimit {
			t.Errorf("token %d (%s): revocation took %s to reach B, want at most %s", i, tk.id, d, propagationLimit)
		}
		times = append(times, d)
		// A itself must refuse it at once (SPEC §8).
		if st, body := a.get(t, client, tk.secret); st != http.StatusUnauthorized {
			t.Errorf("token %d revoked through A: A answers %d %q, want 401", i, st, body)
		}
	}
	slices.Sort(times)
	ms := func(d time.Duration) string {
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64)
	}
	t.Logf("propagation over %d revocations: median %s ms, p90 %s ms, max %s ms (measured from sending DELETE to A until B answers 401)",
		len(times), ms(percentile(times, 50)), ms(percentile(times, 90)), ms(times[len(times)-1]))
	t.Logf("B answered 200 to %d polls after a DELETE had been sent to A (answers from its cache before the notification)", stale)

	t.Run("created token", func(t *testing.T) {
		start := time.Now()
		v := a.createToken(t, client, `{"user":"bob","name":"fresh"}`)
		d, ok := waitFor(t, start, func() bool {
			st, body := b.get(t, client, v.Token)
			return st == http.StatusOK && body == "hello bob"
		})
		if !ok || d > propagationLimit {
			t.Errorf("a token created through A: B accepts it after %s (within cap: %v), want at most %s", d, ok, propagationLimit)
		}
		t.Logf("created token usable on B after %s ms", ms(d))
	})

	t.Run("rotation", func(t *testing.T) {
		old := a.createToken(t, client, `{"user":"carol","name":"rotated"}`)
		if st, body := b.get(t, client, old.Token); st != http.StatusOK {
			t.Fatalf("the token to rotate on B: %d %q", st, body)
		}
		start := time.Now()
		var fresh tokenView
		a.adminJSON(t, client, http.MethodPost, "/tokens/"+old.ID+"/rotate", `{"grace":"0s"}`, http.StatusCreated, &fresh)
		if !secretPattern.MatchString(fresh.Token) || fresh.ID == old.ID {
			t.Fatalf("rotate answered id %q token %q", fresh.ID, fresh.Token)
		}
		d, ok := waitFor(t, start, func() bool {
			stOld, _ := b.get(t, client, old.Token)
			stNew, _ := b.get(t, client, fresh.Token)
			return stOld == http.StatusUnauthorized && stNew == http.StatusOK
		})
		if !ok || d > propagationLimit {
			t.Errorf("a rotation through A (grace 0): B refuses the old and accepts the new token after %s (within cap: %v), want at most %s", d, ok, propagationLimit)
		}
		t.Logf("rotation applied on B after %s ms", ms(d))
	})

	t.Run("settings change", func(t *testing.T) {
		v := a.createToken(t, client, `{"user":"dave","name":"probe"}`)
		const disabled = `{"testEndpointUnavailable":"The test endpoint has been disabled by an administrator"}`
		if _, body := b.testEndpoint(t, client, v.Token); body != `{"isSuccessfulAuthentication":true}` {
			t.Fatalf("test endpoint on B before the change: %q", body)
		}
		t.Cleanup(func() {
			a.admin(t, client, http.MethodPut, "/settings", `{"test_endpoint_enabled":true}`, http.StatusOK)
		})
		start := time.Now()
		a.admin(t, client, http.MethodPut, "/settings", `{"test_endpoint_enabled":false}`, http.StatusOK)
		d, ok := waitFor(t, start, func() bool {
			_, body := b.testEndpoint(t, client, v.Token)
			return body == disabled
		})
		if !ok || d > propagationLimit {
			t.Errorf("test_endpoint_enabled false through A: B shows the disabled body after %s (within cap: %v), want at most %s", d, ok, propagationLimit)
		}
		t.Logf("settings change applied on B after %s ms", ms(d))
		if _, body := a.testEndpoint(t, client, v.Token); body != disabled {
			t.Errorf("test endpoint on A after the change: %q", body)
		}
	})
}

// TestPostgresOutageFailsClosed stops and restarts a real PostgreSQL server
// under a bounded load on a real Caddy: cached successes are served until
// their TTL, everything else gets 503, never a success, and service comes
// back by itself when the database does (issue 5).
func TestPostgresOutageFailsClosed(t *testing.T) {
	caddy := caddyBinary(t)
	cluster := startPGCluster(t)
	const cacheTTL = 3 * time.Second
	srv := startPostgresCaddy(t, caddy, "outage", cluster.dsn, "3s")
	// A second server on the same database, idle during the outage: after
	// it, a change made through it must still reach srv through srv's
	// (reconnected) listener.
	other := startPostgresCaddy(t, caddy, "other", cluster.dsn, "3s")
	client := loopbackClient()
	// Well formed, with a valid checksum, but in no store that srv knows.
	cliDir := t.TempDir()
	cli := &harness{t: t, caddy: caddy, env: childEnv(t, cliDir)}
	stranger := cli.createToken(filepath.Join(cliDir, "elsewhere.json"), "--user", "alice")

	t1 := srv.createToken(t, client, `{"user":"alice","name":"warm"}`)
	t2 := srv.createToken(t, client, `{"user":"alice","name":"cold"}`)
	random := "cat_" + randomAlnum(38)
	if st, body := srv.get(t, client, t1.Token); st != http.StatusOK {
		t.Fatalf("T1 before the outage: %d %q", st, body)
	}

	// Bounded load: T1 every 20 ms, at most 3000 requests (a minute).
	type sample struct {
		// at is when the request was sent: on a loaded machine the answer
		// may come much later, and what it shows is the state it was
		// judged in, after at.
		at     time.Time
		status int // 0: the request failed
		body   string
	}
	var (
		mu      sync.Mutex
		samples []sample
	)
	stopLoad := make(chan struct{})
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for range 3000 {
			select {
			case <-stopLoad:
				return
			case <-tick.C:
			}
			sent := time.Now()
			st, body, _ := request(client, http.MethodGet, srv.site+"/", t1.Token)
			mu.Lock()
			samples = append(samples, sample{sent, st, body})
			mu.Unlock()
		}
	}()
	var stopLoadOnce sync.Once
	endLoad := func() { stopLoadOnce.Do(func() { close(stopLoad); <-loadDone }) }
	t.Cleanup(endLoad)

	time.Sleep(500 * time.Millisecond) // some successes under load first

	// Down.
	downStart := time.Now()
	cluster.pgCtl(t, "-D", cluster.data, "-m", "fast", "-w", "-t", "60", "stop")
	down := time.Now()
	t.Logf("PostgreSQL stopped (pg_ctl stop took %s)", down.Sub(downStart).Round(time.Millisecond))

	t.Run("a token never looked up gets 503 at once", func(t *testing.T) {
		st, body := srv.get(t, client, t2.Token)
		if st != http.StatusServiceUnavailable || body != unavailableBody {
			t.Errorf("T2 with the database down: %d %q, want 503 %s", st, body, unavailableBody)
		}
	})
	t.Run("an unknown token is never accepted", func(t *testing.T) {
		for _, tc := range []struct{ name, secret string }{
			{"a random token (bad checksum)", random},
			{"a well-formed token of another store", stranger},
		} {
			st, body := srv.get(t, client, tc.secret)
			if st == http.StatusOK {
				t.Errorf("%s with the database down: 200 %q", tc.name, body)
			}
			if st != http.StatusServiceUnavailable && st != http.StatusUnauthorized {
				t.Errorf("%s with the database down: %d %q, want 503 or 401", tc.name, st, body)
			}
			t.Logf("%s with the database down answered %d %s", tc.name, st, body)
		}
	})

	// Watch T1's answers until the cache TTL is well past, then a little
	// more, all while the load runs.
	time.Sleep(cacheTTL + 2*time.Second)
	mu.Lock()
	during := slices.Clone(samples)
	mu.Unlock()
	var last200, first503 time.Time
	for _, s := range during {
		if s.at.Before(down) {
			continue
		}
		switch s.status {
		case http.StatusOK:
			last200 = s.at
			// The answer was cached before the database went down, so
			// a request sent more than cacheTTL after that cannot find
			// it (100 ms for the clocks' granularity).
			if s.at.After(down.Add(cacheTTL + 100*time.Millisecond)) {
				t.Errorf("T1 answered 200 at +%s after the stop, past its cache TTL %s", s.at.Sub(down).Round(time.Millisecond), cacheTTL)
			}
		case http.StatusServiceUnavailable:
			if first503.IsZero() {
				first503 = s.at
			}
			if s.body != unavailableBody {
				t.Errorf("T1 at +%s: 503 with body %q, want %s", s.at.Sub(down).Round(time.Millisecond), s.body, unavailableBody)
			}
		default:
			t.Errorf("T1 at +%s with the database down: %d %q, want 200 (cached) or 503", s.at.Sub(down).Round(time.Millisecond), s.status, s.body)
		}
		if !first503.IsZero() && s.status == http.StatusOK {
			t.Errorf("T1 answered 200 at +%s, after a 503 at +%s", s.at.Sub(down).Round(time.Millisecond), first503.Sub(down).Round(time.Millisecond))
		}
	}
	if first503.IsZero() {
		t.Fatalf("T1 never answered 503 in the %s after the database stopped", cacheTTL+2*time.Second)
	}
	rel := func(at time.Time) string {
		if at.IsZero() {
			return "never"
		}
		return "+" + at.Sub(down).Round(time.Millisecond).String()
	}
	t.Logf("outage: T1 last 200 at %s, first 503 at %s after the stop (cache_ttl %s)", rel(last200), rel(first503), cacheTTL)
	if st, body := srv.get(t, client, t2.Token); st != http.StatusServiceUnavailable || body != unavailableBody {
		t.Errorf("T2 after the TTL, database down: %d %q", st, body)
	}

	// Up again: same data, same port.
	upStart := time.Now()
	cluster.pgCtl(t, "-D", cluster.data, "-l", filepath.Join(cluster.dir, "postgres.log"),
		"-o", "-p "+cluster.port, "-w", "-t", "60", "start")
	up := time.Now()
	t.Logf("PostgreSQL started again (pg_ctl start took %s, %s after the stop)", up.Sub(upStart).Round(time.Millisecond), up.Sub(down).Round(time.Millisecond))

	const recoveryLimit = 15 * time.Second
	var recovered time.Duration
	deadline := up.Add(recoveryLimit)
	for {
		st1, _ := srv.get(t, client, t1.Token)
		st2, _ := srv.get(t, client, t2.Token)
		if st1 == http.StatusOK && st2 == http.StatusOK {
			recovered = time.Since(up)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s after PostgreSQL came back: T1 %d, T2 %d, want both 200", recoveryLimit, st1, st2)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("recovery: T1 and T2 answer 200 again %s after PostgreSQL started", recovered.Round(time.Millisecond))

	// The load sees the recovery too, and a random token stays refused.
	time.Sleep(300 * time.Millisecond)
	endLoad()
	mu.Lock()
	defer mu.Unlock()
	if n := len(samples); n == 0 || samples[n-1].status != http.StatusOK {
		t.Errorf("the load's last answer after recovery: %+v", samples[len(samples)-1])
	}
	counts := map[int]int{}
	for _, s := range samples {
		counts[s.status]++
	}
	t.Logf("load: %d requests with T1, by status %v", len(samples), counts)
	for _, secret := range []string{random, stranger} {
		if st, body := srv.get(t, client, secret); st != http.StatusUnauthorized {
			t.Errorf("an unknown token after recovery: %d %q, want 401", st, body)
		}
	}
	// The store is writable again, and srv's listener is back: T1, cached
	// on srv for cache_ttl, revoked through the other server, is refused by
	// srv within 1 s (sooner than the TTL could explain).
	if st, _ := srv.get(t, client, t1.Token); st != http.StatusOK {
		t.Fatalf("T1 on srv before its revocation: %d", st)
	}
	var d time.Duration
	var ok bool
	for try := range 3 {
		start := time.Now()
		if try > 0 {
			// The listener may still be reconnecting: a fresh token each try.
			v := other.createToken(t, client, fmt.Sprintf(`{"user":"alice","name":"after-%d"}`, try))
			t1 = v
			if st, _ := srv.get(t, client, t1.Token); st != http.StatusOK {
				t.Fatalf("a new token on srv: %d", st)
			}
			start = time.Now()
		}
		other.admin(t, client, http.MethodDelete, "/tokens/"+t1.ID, "", http.StatusOK)
		d, ok = waitFor(t, start, func() bool {
			st, _ := srv.get(t, client, t1.Token)
			return st == http.StatusUnauthorized
		})
		t.Logf("after recovery (try %d): a revocation through the other server reached srv in %s", try+1, d.Round(100*time.Microsecond))
		if ok && d <= propagationLimit {
			break
		}
	}
	if !ok || d > propagationLimit {
		t.Errorf("after recovery a revocation through the other server took %s to reach srv, want at most %s (its listener did not reconnect?)", d, propagationLimit)
	}
}

// caddyServer is one `caddy run` with a PostgreSQL store.
type caddyServer struct {
	name      string
	adminBase string // http://127.0.0.1:port/api-token-auth/default
	site      string // http://127.0.0.1:port
}

// startPostgresCaddy starts `caddy run` with api_token_auth on the
// PostgreSQL store dsn, named in the Caddyfile as {env.PG_DSN}. Lockout
// (SPEC §7) is off: these tests send many requests with revoked tokens from
// one address, and a ban would hide the answers they measure.
func startPostgresCaddy(t *testing.T, caddyBin, name, dsn, cacheTTL string) *caddyServer {
	t.Helper()
	dir := t.TempDir()
	h := &harness{t: t, caddy: caddyBin, env: append(childEnv(t, dir), "PG_DSN="+dsn)}
	adminAddr, siteAddr := freeAddr(t), freeAddr(t)
	text := fmt.Sprintf(`{
	admin %s
	storage file_system %q
	persist_config off
}

http://%s {
	bind 127.0.0.1
	api_token_auth {
		store postgres {env.PG_DSN}
		cache_ttl %s
		lockout {
			max_failures 0
			ip_max_failures 0
		}
	}
	respond "hello {http.auth.user.id}"
}
`, adminAddr, filepath.Join(dir, "data"), siteAddr, cacheTTL)
	caddyfile := writeFile(t, dir, "Caddyfile", text)
	h.startCaddy(dir, caddyfile, siteAddr)
	return &caddyServer{
		name:      name,
		adminBase: "http://" + adminAddr + "/api-token-auth/default",
		site:      "http://" + siteAddr,
	}
}

type tokenView struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}

func (s *caddyServer) createToken(t *testing.T, c *http.Client, body string) tokenView {
	t.Helper()
	var v tokenView
	s.adminJSON(t, c, http.MethodPost, "/tokens", body, http.StatusCreated, &v)
	if v.ID == "" || !secretPattern.MatchString(v.Token) {
		t.Fatalf("server %s: POST /tokens answered id %q token %q", s.name, v.ID, v.Token)
	}
	return v
}

func (s *caddyServer) admin(t *testing.T, c *http.Client, method, path, body string, want int) []byte {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, s.adminBase+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("server %s: %s %s: %v", s.name, method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("server %s: %s %s: %d %s, want %d", s.name, method, path, resp.StatusCode, data, want)
	}
	return data
}

func (s *caddyServer) adminJSON(t *testing.T, c *http.Client, method, path, body string, want int, v any) {
	t.Helper()
	data := s.admin(t, c, method, path, body, want)
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("server %s: %s %s answered %q: %v", s.name, method, path, data, err)
	}
}

// get sends GET / with the token as Bearer; a transport error fails the test.
func (s *caddyServer) get(t *testing.T, c *http.Client, secret string) (int, string) {
	t.Helper()
	st, body, err := request(c, http.MethodGet, s.site+"/", secret)
	if err != nil {
		t.Fatalf("server %s: GET /: %v", s.name, err)
	}
	return st, body
}

func (s *caddyServer) testEndpoint(t *testing.T, c *http.Client, secret string) (int, string) {
	t.Helper()
	st, body, err := request(c, http.MethodGet, s.site+testEndpoint, secret)
	if err != nil {
		t.Fatalf("server %s: GET %s: %v", s.name, testEndpoint, err)
	}
	return st, body
}

func request(c *http.Client, method, u, secret string) (int, string, error) {
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data), err
}

// loopbackClient talks to 127.0.0.1 directly, never through a proxy.
func loopbackClient() *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4},
	}
}

// waitFor polls cond every pollInterval until it holds or pollCap has
// passed since start; it returns the time from start until cond held.
func waitFor(t *testing.T, start time.Time, cond func() bool) (time.Duration, bool) {
	t.Helper()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > pollCap {
			return time.Since(start), false
		}
		time.Sleep(pollInterval)
	}
}

// percentile of sorted durations, nearest rank.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (p*len(sorted)+99)/100 - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func randomAlnum(n int) string {
	const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// pgCluster is a throwaway cluster started with scripts/pg-test-cluster.sh.
type pgCluster struct {
	dir, data, dsn, port string
	pgCtlBin             string
	owner                string // user to run pg_ctl as; "" for this one
}

// startPGCluster starts a cluster of this test's own, and stops and
// removes it when the test ends.
func startPGCluster(t *testing.T) *pgCluster {
	t.Helper()
	root := repoRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "scripts", "pg-test-cluster.sh"))
	cmd.Dir = root
	cmd.WaitDelay = 5 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("scripts/pg-test-cluster.sh: %v\n%s", err, errOut.String())
	}
	c := &pgCluster{}
	for _, line := range strings.Split(out.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "PG_DIR="); ok {
			c.dir = v
		}
		if v, ok := strings.CutPrefix(line, "PG_DSN="); ok {
			c.dsn = v
		}
	}
	if c.dir == "" || c.dsn == "" {
		t.Fatalf("scripts/pg-test-cluster.sh printed %q", out.String())
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "scripts", "pg-test-cluster.sh"), "stop", c.dir)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("scripts/pg-test-cluster.sh stop %s: %v\n%s", c.dir, err, out)
		}
	})
	c.data = filepath.Join(c.dir, "data")
	u, err := url.Parse(c.dsn)
	if err != nil {
		t.Fatalf("PG_DSN: %v", err)
	}
	c.port = u.Port()
	ver, err := os.ReadFile(filepath.Join(c.data, "PG_VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	c.pgCtlBin = filepath.Join("/usr/lib/postgresql", strings.TrimSpace(string(ver)), "bin", "pg_ctl")
	info, err := os.Stat(c.data)
	if err != nil {
		t.Fatal(err)
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Getuid() {
		owner, err := user.LookupId(strconv.Itoa(int(st.Uid)))
		if err != nil {
			t.Fatalf("owner of %s: %v", c.data, err)
		}
		c.owner = owner.Username
	}
	return c
}

// pgCtl runs pg_ctl as the cluster's owner.
func (c *pgCluster) pgCtl(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	name, full := c.pgCtlBin, args
	if c.owner != "" {
		name, full = "runuser", append([]string{"-u", c.owner, "--", c.pgCtlBin}, args...)
	}
	cmd := exec.CommandContext(ctx, name, full...)
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_ctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
