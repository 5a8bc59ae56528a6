package caddyauth

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// These tests run the handler inside a real Caddy (in this test process,
// through Caddy's admin API, as caddytest does) configured by Caddyfile.

const e2eBase = "http://localhost:9080"

// startCaddy loads caddyfile into the in-process Caddy. caddytest skips a
// test when it cannot start Caddy; here that is a failure, never a pass.
func startCaddy(t *testing.T, caddyfile string) *caddytest.Tester {
	t.Helper()
	tester := caddytest.NewTester(t)
	loaded := false
	defer func() {
		if !loaded {
			t.Errorf("the in-process Caddy did not load the config")
		}
	}()
	tester.InitServer(caddyfile, "caddyfile")
	loaded = !t.Skipped()
	return tester
}

func e2eCaddyfile(storePath string) string {
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
	handle /jira/* {
		api_token_auth {
			realm jira
			store file ` + storePath + `
			test_endpoint /jira/whoami
			allow_groups ops
			allow_ips 127.0.0.0/8 192.0.2.0/24
		}
		respond "jira {http.auth.user.id}"
	}
	handle {
		api_token_auth {
			realm e2e
			store file ` + storePath + `
			session_cookies JSESSIONID
		}
		respond "hello {http.auth.user.id}|{http.auth.user.token_name}|{http.auth.user.scope}|{http.auth.user.groups}|authz={http.request.header.Authorization}"
	}
}
`
}

// call makes one request and returns the response and its body.
func call(t *testing.T, tester *caddytest.Tester, method, path, authz string, header map[string]string) (*http.Response, string) {
	t.Helper()
	url := path
	if !strings.HasPrefix(url, "http") {
		url = e2eBase + path
	}
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := tester.Client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func TestEndToEnd(t *testing.T) {
	f := newFixture(t, time.Now())
	tester := startCaddy(t, e2eCaddyfile(f.path))
	s := f.secrets
	failure := func(detail string) string {
		data, _ := json.Marshal(map[string]string{"message": detail})
		return string(data)
	}
	testFailure := func(detail string) string {
		return `{"isSuccessfulAuthentication":false,"authenticationFailureDetails":"` + detail + `"}`
	}
	const testSuccess = `{"isSuccessfulAuthentication":true}`
	const testPath = DefaultTestEndpoint

	tests := []struct {
		name   string
		method string
		path   string
		authz  string
		header map[string]string
		status int
		body   string
		seraph string
	}{
		// SPEC §4 on a protected route, one row each.
		{"1 no header", "GET", "/", "", nil, 401, failure("No valid bearer- or basic auth header present"), "AUTHENTICATED_FAILED"},
		{"1 malformed", "GET", "/", "Basic !!!", nil, 401, failure("No valid bearer- or basic auth header present"), "AUTHENTICATED_FAILED"},
		{"4 unknown", "GET", "/", "Bearer cat_nope", nil, 401, failure("Token is invalid, has been revoked or expired"), "AUTHENTICATED_FAILED"},
		{"4 revoked", "GET", "/", "Bearer " + s[tokRevoked], nil, 401, failure("Token is invalid, has been revoked or expired"), "AUTHENTICATED_FAILED"},
		{"4 expired", "GET", "/", basicAuth("alice", s[tokExpired]), nil, 401, failure("Token is invalid, has been revoked or expired"), "AUTHENTICATED_FAILED"},
		{"4 other user", "GET", "/", basicAuth("bob", s[tokRW]), nil, 401, failure("Token is invalid, has been revoked or expired"), "AUTHENTICATED_FAILED"},
		{"5 disabled", "GET", "/", "Bearer " + s[tokBob], nil, 403, failure("You are not permitted to use API tokens"), "AUTHORISATION_FAILED"},
		{"5 not in allow_groups", "GET", "/jira/x", "Bearer " + s[tokCarol], nil, 403, failure("You are not permitted to use API tokens"), "AUTHORISATION_FAILED"},
		{"6 token allowed_ips", "GET", "/", "Bearer " + s[tokIPLimited], nil, 403, failure("IP address 127.0.0.1 not permitted"), "AUTHORISATION_FAILED"},
		{"6 allow_ips via trusted proxy", "GET", "/jira/x", "Bearer " + s[tokRW], map[string]string{"X-Forwarded-For": "198.51.100.9"}, 403, failure("IP address 198.51.100.9 not permitted"), "AUTHORISATION_FAILED"},
		{"7 required header", "GET", "/", "Bearer " + s[tokHeaders], map[string]string{"X-Env": "prod"}, 403, failure("Required request header X-Team is missing or has the wrong value"), "AUTHORISATION_FAILED"},
		{"8 scope", "PATCH", "/", basicAuth("alice", s[tokRO]), nil, 403, failure("The token scope is read-only and only covers GET, HEAD and OPTIONS requests. Request method type was PATCH."), "AUTHORISATION_FAILED"},
		// Successes.
		{"basic", "GET", "/", basicAuth("alice", s[tokRO]), nil, 200, "hello alice|ro|read-only|developers,ops|authz=", "OK"},
		{"bearer", "DELETE", "/", "Bearer " + s[tokRW], nil, 200, "hello alice|rw|read-write|developers,ops|authz=", "OK"},
		{"token allowed_ips via trusted proxy", "GET", "/", "Bearer " + s[tokIPLimited], map[string]string{"X-Forwarded-For": "192.0.2.9"}, 200, "hello alice|ip-limited|read-write|developers,ops|authz=", "OK"},
		{"required headers", "POST", "/", "Bearer " + s[tokHeaders], map[string]string{"X-Env": "prod", "X-Team": "blue"}, 200, "hello alice|headers|read-write|developers,ops|authz=", "OK"},
		{"jira realm", "GET", "/jira/x", basicAuth("alice", s[tokRW]), nil, 200, "jira alice", "OK"},
		// SPEC §5, every answer.
		{"test success", "GET", testPath, basicAuth("alice", s[tokRW]), nil, 200, testSuccess, "OK"},
		{"test success PUT", "PUT", testPath, "Bearer " + s[tokRW], nil, 200, testSuccess, "OK"},
		{"test no header", "POST", testPath, "", nil, 200, testFailure("No valid bearer- or basic auth header present"), "AUTHENTICATED_FAILED"},
		{"test bad token", "GET", testPath, basicAuth("alice", "cat_x"), nil, 200, testFailure("Token is invalid, has been revoked or expired"), "AUTHENTICATED_FAILED"},
		{"test disabled user", "GET", testPath, "Bearer " + s[tokBob], nil, 200, testFailure("You are not permitted to use API tokens"), "AUTHORISATION_FAILED"},
		{"test ip", "GET", testPath, "Bearer " + s[tokIPLimited], nil, 200, testFailure("IP address 127.0.0.1 not permitted"), "AUTHORISATION_FAILED"},
		{"test header", "GET", testPath, "Bearer " + s[tokHeaders], nil, 200, testFailure("Required request header X-Env is missing or has the wrong value"), "AUTHORISATION_FAILED"},
		{"test scope of its own method", "POST", testPath, "Bearer " + s[tokRO], nil, 200, testFailure("The token scope is read-only and only covers GET, HEAD and OPTIONS requests. Request method type was POST."), "AUTHORISATION_FAILED"},
		{"test custom path", "GET", "/jira/whoami", "Bearer " + s[tokRW], nil, 200, testSuccess, "OK"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := call(t, tester, tc.method, tc.path, tc.authz, tc.header)
			if resp.StatusCode != tc.status || body != tc.body {
				t.Fatalf("got %d %s\nwant %d %s", resp.StatusCode, body, tc.status, tc.body)
			}
			if got := resp.Header.Get(headerSeraphLoginReason); got != tc.seraph {
				t.Errorf("%s = %q, want %q", headerSeraphLoginReason, got, tc.seraph)
			}
			challenges := strings.Join(resp.Header.Values("WWW-Authenticate"), "|")
			realm := "e2e"
			if strings.HasPrefix(tc.path, "/jira/") {
				realm = "jira"
			}
			if want := `Basic realm="` + realm + `"|Bearer realm="` + realm + `"`; tc.status == 401 && challenges != want {
				t.Errorf("WWW-Authenticate = %q, want %q", challenges, want)
			}
			if tc.path == testPath {
				if resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Content-Type") != "application/json" {
					t.Errorf("test endpoint headers: %v", resp.Header)
				}
				if got := resp.Header.Get("Set-Cookie"); got != "JSESSIONID=; Path=/; Max-Age=0" {
					t.Errorf("Set-Cookie = %q", got)
				}
			}
		})
	}

	t.Run("revocation by editing the file", func(t *testing.T) {
		authz := "Bearer " + s[tokSoon]
		if resp, _ := call(t, tester, "GET", "/", authz, nil); resp.StatusCode != 200 {
			t.Fatalf("token %s not usable before revocation: %d", tokSoon, resp.StatusCode)
		}
		revokeInFile(t, f.path, f.tokens[tokSoon].ID)
		deadline := time.Now().Add(2 * time.Second)
		for {
			resp, _ := call(t, tester, "GET", "/", authz, nil)
			if resp.StatusCode == 401 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("revoked token still accepted 2 s after the file changed (status %d)", resp.StatusCode)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// TestEndToEndTestEndpointOff needs its own config: the off switch takes
// over the default test path for the whole site.
func TestEndToEndTestEndpointOff(t *testing.T) {
	f := newFixture(t, time.Now())
	tester := startCaddy(t, `
{
	admin localhost:2999
	http_port 9080
	storage file_system `+filepath.Join(filepath.Dir(f.path), "caddy-storage")+`
}
http://localhost:9080 {
	api_token_auth {
		realm off
		store file `+f.path+`
		test_endpoint off
	}
	respond "hello {http.auth.user.id}"
}
`)
	for _, method := range []string{"GET", "POST"} {
		resp, body := call(t, tester, method, DefaultTestEndpoint, "Bearer "+f.secrets[tokRW], nil)
		if resp.StatusCode != 200 || body != `{"testEndpointUnavailable":"The test endpoint has been disabled by an administrator"}` {
			t.Errorf("%s: got %d %s", method, resp.StatusCode, body)
		}
	}
	// Protected routes still work.
	if resp, body := call(t, tester, "GET", "/", "Bearer "+f.secrets[tokRW], nil); resp.StatusCode != 200 || body != "hello alice" {
		t.Errorf("protected route: %d %s", resp.StatusCode, body)
	}
}

// revokeInFile edits the store file as an operator would, by hand.
func revokeInFile(t *testing.T, path, id string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	for _, tok := range doc["tokens"].([]any) {
		if m := tok.(map[string]any); m["id"] == id {
			m["revoked"] = time.Now().Add(-time.Second).UTC().Format(time.RFC3339)
		}
	}
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}
