package caddyauth

import (
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/captcha"
)

// Lockout, end to end, in the in-process Caddy. Client addresses come
// from X-Forwarded-For: the test client is a trusted proxy, so each test
// can play several clients.

// lockoutCaddyfile is a site with one realm, named after the test: the
// lockout state of a realm outlives config loads, by design.
func lockoutCaddyfile(t *testing.T, storePath, extra string) string {
	// Caddy's storage beside the token store: lockouts persist there, and
	// must not leak from one test (or test run) into another.
	return `
{
	admin localhost:2999
	http_port 9080
	storage file_system ` + filepath.Join(filepath.Dir(storePath), "caddy-storage") + `
	servers {
		trusted_proxies static private_ranges
	}
}
http://localhost:9080 {
	api_token_auth {
		realm ` + t.Name() + `
		store file ` + storePath + `
		` + extra + `
	}
	respond "hello {http.auth.user.id}"
}
`
}

const captchaDetail = "For security reasons you must answer a CAPTCHA question."

func from(ip string) map[string]string { return map[string]string{"X-Forwarded-For": ip} }

func TestLockoutEndToEnd(t *testing.T) {
	f := newFixture(t, time.Now())
	tester := startCaddy(t, lockoutCaddyfile(t, f.path, ""))
	good := basicAuth("alice", f.secrets[tokRW])
	bad := basicAuth("alice", "cat_wrong")
	const attacker, home = "203.0.113.1", "203.0.113.2"

	// Five bad attempts from the attacker's address are judged...
	for i := 1; i <= captcha.DefaultMaxFailures; i++ {
		if resp, body := call(t, tester, "GET", "/", bad, from(attacker)); resp.StatusCode != 401 {
			t.Fatalf("bad attempt %d: %d %s", i, resp.StatusCode, body)
		}
	}
	// ...then the right token is refused there, with the CAPTCHA answer.
	resp, body := call(t, tester, "GET", "/", good, from(attacker))
	if resp.StatusCode != 403 || body != `{"message":"`+captchaDetail+`"}` {
		t.Fatalf("right token under a challenge: %d %s", resp.StatusCode, body)
	}
	if got := resp.Header.Get(headerSeraphLoginReason); got != "AUTHENTICATION_DENIED" {
		t.Errorf("%s = %q", headerSeraphLoginReason, got)
	}
	if got, want := resp.Header.Get(headerAuthenticationDenied), "CAPTCHA_CHALLENGE; login-url=http://localhost:9080/api-token-auth/unlock"; got != want {
		t.Errorf("%s = %q, want %q", headerAuthenticationDenied, got, want)
	}
	_, body = call(t, tester, "GET", DefaultTestEndpoint, good, from(attacker))
	if want := `{"isSuccessfulAuthentication":false,"authenticationFailureDetails":"` + captchaDetail + `"}`; body != want {
		t.Errorf("test endpoint under a challenge: %s", body)
	}

	// The attacker has not locked alice out at her own address, and a
	// Bearer request names no user, so no challenge holds it.
	if resp, body := call(t, tester, "GET", "/", good, from(home)); resp.StatusCode != 200 {
		t.Errorf("alice at home: %d %s", resp.StatusCode, body)
	}
	if resp, body := call(t, tester, "GET", "/", "Bearer "+f.secrets[tokRW], from(attacker)); resp.StatusCode != 200 {
		t.Errorf("Bearer from the challenged address: %d %s", resp.StatusCode, body)
	}

	// A reload keeps the challenge.
	startCaddy(t, lockoutCaddyfile(t, f.path, "session_cookies JSESSIONID"))
	if resp, _ := call(t, tester, "GET", "/", good, from(attacker)); resp.StatusCode != 403 {
		t.Errorf("challenge lost in a reload: %d", resp.StatusCode)
	}

	// reset_after ends it.
	realm, ok := captcha.Lookup(t.Name())
	if !ok {
		t.Fatalf("realm %s is not live", t.Name())
	}
	realm.Lockout.SetClock(func() time.Time { return time.Now().Add(captcha.DefaultResetAfter + time.Second) })
	resp, body = call(t, tester, "GET", "/", good, from(attacker))
	realm.Lockout.SetClock(time.Now)
	if resp.StatusCode != 200 {
		t.Errorf("after reset_after: %d %s", resp.StatusCode, body)
	}
}

func TestLockoutConcurrentAttempts(t *testing.T) {
	f := newFixture(t, time.Now())
	tester := startCaddy(t, lockoutCaddyfile(t, f.path, ""))
	const ip, attempts = "203.0.113.3", 60

	statuses := make(chan int, attempts)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range attempts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			req, _ := http.NewRequest("GET", e2eBase+"/", nil)
			req.Header.Set("Authorization", basicAuth("bob", "cat_wrong"))
			req.Header.Set("X-Forwarded-For", ip)
			resp, err := tester.Client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	close(start)
	wg.Wait()
	close(statuses)
	count := map[int]int{}
	for s := range statuses {
		count[s]++
	}
	if count[401] != captcha.DefaultMaxFailures || count[403] != attempts-captcha.DefaultMaxFailures {
		t.Fatalf("%d concurrent bad attempts: %v; want exactly %d judged (401), the rest refused (403)",
			attempts, count, captcha.DefaultMaxFailures)
	}
	realm, _ := captcha.Lookup(t.Name())
	st := realm.Lockout.State()
	if len(st.Challenges) != 1 || st.Challenges[0].User != "bob" || st.Challenges[0].IP.String() != ip {
		t.Errorf("challenges = %+v", st.Challenges)
	}
	if len(st.Counters) != 1 || st.Counters[0].IP.String() != ip || st.Counters[0].Failures != captcha.DefaultMaxFailures {
		t.Errorf("counters = %+v, want the IP's at %d", st.Counters, captcha.DefaultMaxFailures)
	}
}

func TestLockoutIPBan(t *testing.T) {
	f := newFixture(t, time.Now())
	tester := startCaddy(t, lockoutCaddyfile(t, f.path, "lockout {\n\t\t\tip_max_failures 3\n\t\t\tip_ban 90s\n\t\t}"))
	const ip = "203.0.113.4"
	// Whatever the user or scheme.
	for _, authz := range []string{"Bearer cat_a", basicAuth("alice", "x"), basicAuth("bob", "y")} {
		if resp, _ := call(t, tester, "GET", "/", authz, from(ip)); resp.StatusCode != 401 {
			t.Fatalf("before the ban: %d", resp.StatusCode)
		}
	}
	resp, body := call(t, tester, "GET", "/", "Bearer "+f.secrets[tokRW], from(ip))
	if want := `{"message":"Too many failed authentication attempts from IP address ` + ip + `"}`; resp.StatusCode != 429 || body != want {
		t.Fatalf("banned address: %d %s", resp.StatusCode, body)
	}
	if got := resp.Header.Get("Retry-After"); got != "90" && got != "89" {
		t.Errorf("Retry-After = %q, want about 90", got)
	}
	if got := resp.Header.Get(headerSeraphLoginReason); got != "AUTHENTICATION_DENIED" {
		t.Errorf("%s = %q", headerSeraphLoginReason, got)
	}
	if resp, _ := call(t, tester, "GET", "/", "Bearer "+f.secrets[tokRW], from("203.0.113.5")); resp.StatusCode != 200 {
		t.Errorf("another address: %d", resp.StatusCode)
	}
}

var puzzleID = regexp.MustCompile(`name="puzzle" type="hidden" value="([^"]+)"`)

// TestUnlockPageClearsTheChallenge solves the CAPTCHA over plain HTTP (the
// browser test does it in Chromium), from the challenged address.
func TestUnlockPageClearsTheChallenge(t *testing.T) {
	f := newFixture(t, time.Now())
	tester := startCaddy(t, lockoutCaddyfile(t, f.path, ""))
	const ip = "203.0.113.6"
	for i := 0; i < captcha.DefaultMaxFailures; i++ {
		call(t, tester, "GET", "/", basicAuth("alice", "wrong"), from(ip))
	}
	good := basicAuth("alice", f.secrets[tokRW])
	if resp, _ := call(t, tester, "GET", "/", good, from(ip)); resp.StatusCode != 403 {
		t.Fatalf("no challenge: %d", resp.StatusCode)
	}

	resp, page := call(t, tester, "GET", captcha.DefaultUnlockPath, "", from(ip))
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Fatalf("unlock page: %d, CSP %q", resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
	}
	m := puzzleID.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no puzzle id in the page:\n%s", page)
	}
	realm, _ := captcha.Lookup(t.Name())
	answer, ok := realm.Puzzles.Peek(m[1])
	if !ok {
		t.Fatal("puzzle not in the store")
	}
	form := url.Values{"username": {"alice"}, "token": {f.secrets[tokRW]}, "puzzle": {m[1]}, "answer": {answer}}
	req, _ := http.NewRequest("POST", e2eBase+captcha.DefaultUnlockPath, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Forwarded-For", ip)
	resp, err := tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(data), captcha.MsgCleared) {
		t.Fatalf("unlock: %d\n%s", resp.StatusCode, data)
	}
	if resp, body := call(t, tester, "GET", "/", good, from(ip)); resp.StatusCode != 200 || body != "hello alice" {
		t.Errorf("after unlocking: %d %s", resp.StatusCode, body)
	}
}
