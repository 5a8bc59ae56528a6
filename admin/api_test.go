package admin

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"golang.org/x/crypto/bcrypt"

	_ "github.com/caddy-apitoken/caddy-apitoken/caddyauth"
	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// The admin API is tested through a real, in-process Caddy: its admin
// server routes /api-token-auth/ to our module, and the site behind
// api_token_auth shows that each change applies at once. This package
// uses its own admin and HTTP ports, so that it can run beside the
// caddyauth package's tests.
const (
	adminAddr = "localhost:2998"
	siteBase  = "http://localhost:9081"
)

type apiFixture struct {
	t      *testing.T
	tester *caddytest.Tester
	dir    string
}

func startAPI(t *testing.T) *apiFixture {
	t.Helper()
	return startAPIWith(t, "")
}

// startAPIWith is startAPI with more global options.
func startAPIWith(t *testing.T, globalOptions string) *apiFixture {
	t.Helper()
	dir := t.TempDir()
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: 2998})
	loaded := false
	defer func() {
		if !loaded {
			t.Errorf("the in-process Caddy did not load the config")
		}
	}()
	tester.InitServer(`
{
	admin `+adminAddr+`
	http_port 9081
	storage file_system `+filepath.Join(dir, "caddy-storage")+`
	`+strings.ReplaceAll(globalOptions, "DIR", dir)+`
	servers {
		trusted_proxies static private_ranges
	}
}
http://localhost:9081 {
	api_token_auth {
		realm corp
		store file `+filepath.Join(dir, "tokens.json")+`
		max_lifetime 30d
	}
	respond "hello {http.auth.user.id}"
}
`, "caddyfile")
	loaded = !t.Skipped()
	return &apiFixture{t: t, tester: tester, dir: dir}
}

// admin sends one admin API request and decodes the JSON answer into out
// (if not nil); it returns the status and the raw body.
func (f *apiFixture) admin(method, path, body string, out any) (int, string) {
	f.t.Helper()
	req, err := http.NewRequest(method, "http://"+adminAddr+path, strings.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := f.tester.Client.Do(req)
	if err != nil {
		f.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(data, out); err != nil {
			f.t.Fatalf("%s %s: answer %s is not the expected JSON: %v", method, path, data, err)
		}
	}
	return resp.StatusCode, string(data)
}

// site sends one request to the protected site.
func (f *apiFixture) site(method, authz string, header map[string]string) (int, string) {
	f.t.Helper()
	req, _ := http.NewRequest(method, siteBase+"/", nil)
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := f.tester.Client.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

func bearer(secret string) string { return "Bearer " + secret }

func basic(user, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+secret))
}

// errorOf returns the "error" of an error answer.
func errorOf(t *testing.T, body string) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
		t.Fatalf("not an {\"error\": …} answer: %s", body)
	}
	return e.Error
}

func TestAdminAPI(t *testing.T) {
	f := startAPI(t)

	// Create: 201 with the secret, once.
	var alice TokenView
	status, body := f.admin("POST", "/api-token-auth/corp/tokens",
		`{"user":"alice","name":"laptop","scope":"read-only","expires_in":"7d","allowed_ips":["127.0.0.0/8"]}`, &alice)
	if status != 201 || !strings.HasPrefix(alice.Token, "cat_") || alice.Status != "active" || alice.Scope != "read-only" {
		t.Fatalf("create: %d %s", status, body)
	}
	if alice.Expires == nil || alice.Expires.Sub(time.Now()) < 6*24*time.Hour {
		t.Errorf("expires_in 7d gave %v", alice.Expires)
	}
	if strings.Contains(body, "sha256:") {
		t.Error("the create answer contains a hash")
	}
	// It works at once.
	if status, body := f.site("GET", bearer(alice.Token), nil); status != 200 || body != "hello alice" {
		t.Fatalf("new token: %d %s", status, body)
	}

	t.Run("get and list never show a secret or hash", func(t *testing.T) {
		var got TokenView
		status, body := f.admin("GET", "/api-token-auth/corp/tokens/"+alice.ID, "", &got)
		if status != 200 || got.ID != alice.ID || got.Token != "" || strings.Contains(body, "sha256:") || strings.Contains(body, alice.Token) {
			t.Errorf("get: %d %s", status, body)
		}
		var list []TokenView
		status, body = f.admin("GET", "/api-token-auth/corp/tokens?user=alice&status=active", "", &list)
		if status != 200 || len(list) != 1 || list[0].ID != alice.ID || strings.Contains(body, "sha256:") {
			t.Errorf("list: %d %s", status, body)
		}
		f.admin("GET", "/api-token-auth/corp/tokens?user=nobody", "", &list)
		if len(list) != 0 {
			t.Errorf("list for an unknown user: %+v", list)
		}
	})

	t.Run("realms", func(t *testing.T) {
		var realms []map[string]any
		status, body := f.admin("GET", "/api-token-auth/", "", &realms)
		if status != 200 || len(realms) != 1 || realms[0]["name"] != "corp" || realms[0]["store"] != "file" ||
			realms[0]["tokens"] != float64(1) || realms[0]["test_endpoint_enabled"] != true {
			t.Errorf("realms: %d %s", status, body)
		}
	})

	t.Run("bad input names the field", func(t *testing.T) {
		tests := []struct{ method, path, body, want string }{
			{"POST", "/api-token-auth/corp/tokens", `{"name":"x"}`, "user"},
			{"POST", "/api-token-auth/corp/tokens", `{"user":"a","scope":"admin"}`, "scope"},
			{"POST", "/api-token-auth/corp/tokens", `{"user":"a","expires_in":"soon"}`, "expires_in"},
			{"POST", "/api-token-auth/corp/tokens", `{"user":"a","expires":"tomorrow"}`, "expires"},
			{"POST", "/api-token-auth/corp/tokens", `{"user":"a","expires_in":"1d","expires":"2030-01-01T00:00:00Z"}`, "expires_in, expires"},
			{"POST", "/api-token-auth/corp/tokens", `{"user":"a","expires_in":"90d"}`, "expires"},
			{"POST", "/api-token-auth/corp/tokens", `{"user":"a","allowed_ips":["10.0.0.0/40"]}`, "allowed_ips"},
			{"POST", "/api-token-auth/corp/tokens", `{"user":"a","required_headers":{"X Y":"z"}}`, "required_headers"},
			{"POST", "/api-token-auth/corp/tokens", `{"user":"a","hash":"md5:abc"}`, "hash"},
			{"POST", "/api-token-auth/corp/tokens", `{"user":"a","colour":"red"}`, `"colour"`},
			{"POST", "/api-token-auth/corp/tokens", `{"user":42}`, "user"},
			{"POST", "/api-token-auth/corp/tokens", `{"user":`, "JSON"},
			{"GET", "/api-token-auth/corp/tokens?status=sleeping", "", "status"},
			{"POST", "/api-token-auth/corp/tokens/" + alice.ID + "/rotate", `{"grace":"-1h"}`, "grace"},
			{"PUT", "/api-token-auth/corp/users/bob", `{"groups":"staff"}`, "groups"},
			{"PUT", "/api-token-auth/corp/settings", `{}`, "test_endpoint_enabled"},
			{"DELETE", "/api-token-auth/corp/lockouts/ips/not-an-ip", "", "ip"},
		}
		for _, tc := range tests {
			status, body := f.admin(tc.method, tc.path, tc.body, nil)
			if status != 400 {
				t.Errorf("%s %s %s: %d %s, want 400", tc.method, tc.path, tc.body, status, body)
				continue
			}
			if msg := errorOf(t, body); !strings.Contains(msg, tc.want) {
				t.Errorf("%s %s %s: error %q does not name %q", tc.method, tc.path, tc.body, msg, tc.want)
			}
		}
	})

	t.Run("unknown things are 404, wrong methods 405", func(t *testing.T) {
		for _, path := range []string{"/api-token-auth/nope/tokens", "/api-token-auth/corp/tokens/nope", "/api-token-auth/corp/users/nobody/tokens", "/api-token-auth/corp/whatever"} {
			method := "GET"
			if strings.HasSuffix(path, "/users/nobody/tokens") {
				method = "DELETE"
			}
			if status, body := f.admin(method, path, "", nil); status != 404 {
				t.Errorf("%s %s: %d %s, want 404", method, path, status, body)
			} else {
				errorOf(t, body)
			}
		}
		for _, tc := range []struct{ method, path string }{{"PUT", "/api-token-auth/corp/tokens"}, {"POST", "/api-token-auth/corp/lockouts"}, {"DELETE", "/api-token-auth/"}} {
			if status, body := f.admin(tc.method, tc.path, "", nil); status != 405 {
				t.Errorf("%s %s: %d %s, want 405", tc.method, tc.path, status, body)
			}
		}
	})

	t.Run("revoke applies at once", func(t *testing.T) {
		var tok TokenView
		f.admin("POST", "/api-token-auth/corp/tokens", `{"user":"carol"}`, &tok)
		if status, _ := f.site("GET", bearer(tok.Token), nil); status != 200 {
			t.Fatalf("before revocation: %d", status)
		}
		var revoked TokenView
		if status, body := f.admin("DELETE", "/api-token-auth/corp/tokens/"+tok.ID, "", &revoked); status != 200 || revoked.Status != "revoked" {
			t.Fatalf("revoke: %d %s", status, body)
		}
		if status, _ := f.site("GET", bearer(tok.Token), nil); status != 401 {
			t.Errorf("revoked token answered %d, want 401 at once", status)
		}
		// Kept, and shown as revoked.
		var list []TokenView
		f.admin("GET", "/api-token-auth/corp/tokens?status=revoked", "", &list)
		if len(list) != 1 || list[0].ID != tok.ID {
			t.Errorf("revoked list = %+v", list)
		}
	})

	t.Run("rotate with a grace period", func(t *testing.T) {
		var old TokenView
		f.admin("POST", "/api-token-auth/corp/tokens", `{"user":"dave","name":"ci","scope":"read-only","allowed_ips":["127.0.0.1"],"required_headers":{"X-Team":"blue"}}`, &old)
		var next TokenView
		status, body := f.admin("POST", "/api-token-auth/corp/tokens/"+old.ID+"/rotate", `{"grace":"1h"}`, &next)
		if status != 201 || next.Token == "" || next.ID == old.ID || next.User != "dave" || next.Name != "ci" ||
			next.Scope != "read-only" || strings.Join(next.AllowedIPs, ",") != "127.0.0.1" || next.RequiredHeaders["X-Team"] != "blue" {
			t.Fatalf("rotate: %d %s", status, body)
		}
		if next.RotatedFrom == nil || next.RotatedFrom.Expires == nil || next.RotatedFrom.Expires.Sub(time.Now()) > time.Hour {
			t.Errorf("old token's new expiry: %+v", next.RotatedFrom)
		}
		team := map[string]string{"X-Team": "blue"}
		for _, secret := range []string{old.Token, next.Token} {
			if status, body := f.site("GET", bearer(secret), team); status != 200 {
				t.Errorf("during the grace period: %d %s", status, body)
			}
		}
		// Without grace, the old token stops at once.
		var third TokenView
		f.admin("POST", "/api-token-auth/corp/tokens/"+next.ID+"/rotate", "", &third)
		if status, _ := f.site("GET", bearer(next.Token), team); status != 401 {
			t.Errorf("rotated without grace, old token: %d, want 401", status)
		}
		if status, _ := f.site("GET", bearer(third.Token), team); status != 200 {
			t.Errorf("newest token: %d", status)
		}
		// max_lifetime 30d caps the new token even though the old one had none.
		if third.Expires == nil || third.Expires.Sub(time.Now()) > 30*24*time.Hour+time.Minute {
			t.Errorf("rotated token expires %v, want within max_lifetime", third.Expires)
		}
	})

	t.Run("users", func(t *testing.T) {
		var u UserView
		if status, body := f.admin("PUT", "/api-token-auth/corp/users/alice", `{"groups":["staff"],"disabled":true}`, &u); status != 200 || !u.Disabled {
			t.Fatalf("put user: %d %s", status, body)
		}
		if status, body := f.site("GET", bearer(alice.Token), nil); status != 403 || !strings.Contains(body, "not permitted") {
			t.Errorf("disabled user: %d %s, want 403 at once", status, body)
		}
		f.admin("PUT", "/api-token-auth/corp/users/alice", `{"groups":["staff"]}`, &u)
		if status, _ := f.site("GET", bearer(alice.Token), nil); status != 200 {
			t.Errorf("re-enabled user: %d", status)
		}
		var users []UserView
		if status, body := f.admin("GET", "/api-token-auth/corp/users", "", &users); status != 200 || len(users) != 1 || users[0].Name != "alice" || users[0].Groups[0] != "staff" {
			t.Errorf("users: %d %s", status, body)
		}
		// Revoke all of a user's tokens.
		var second TokenView
		f.admin("POST", "/api-token-auth/corp/tokens", `{"user":"alice"}`, &second)
		var answer map[string]any
		if status, body := f.admin("DELETE", "/api-token-auth/corp/users/alice/tokens", "", &answer); status != 200 || answer["revoked"] != float64(2) {
			t.Errorf("revoke all: %d %s", status, body)
		}
		for _, secret := range []string{alice.Token, second.Token} {
			if status, _ := f.site("GET", bearer(secret), nil); status != 401 {
				t.Errorf("after revoking all: %d", status)
			}
		}
	})

	t.Run("lockouts", func(t *testing.T) {
		var tok TokenView
		f.admin("POST", "/api-token-auth/corp/tokens", `{"user":"erin"}`, &tok)
		attacker := map[string]string{"X-Forwarded-For": "203.0.113.50"}
		for i := 0; i < 5; i++ {
			f.site("GET", basic("erin", "wrong"), attacker)
		}
		for i := 0; i < 20; i++ {
			f.site("GET", bearer("cat_wrong"), map[string]string{"X-Forwarded-For": "203.0.113.51"})
		}
		if status, _ := f.site("GET", basic("erin", tok.Token), attacker); status != 403 {
			t.Fatalf("no challenge: %d", status)
		}
		var state struct {
			Challenges []map[string]any `json:"challenges"`
			Bans       []map[string]any `json:"bans"`
		}
		status, body := f.admin("GET", "/api-token-auth/corp/lockouts", "", &state)
		if status != 200 || len(state.Challenges) != 1 || state.Challenges[0]["user"] != "erin" || len(state.Bans) != 1 || state.Bans[0]["ip"] != "203.0.113.51" {
			t.Fatalf("lockouts: %d %s", status, body)
		}
		var cleared map[string]any
		if status, body := f.admin("DELETE", "/api-token-auth/corp/lockouts/users/erin", "", &cleared); status != 200 || cleared["challenges_cleared"] != float64(1) {
			t.Errorf("clear user: %d %s", status, body)
		}
		if status, _ := f.site("GET", basic("erin", tok.Token), attacker); status != 200 {
			t.Errorf("after clearing erin: %d", status)
		}
		if status, body := f.admin("DELETE", "/api-token-auth/corp/lockouts/ips/203.0.113.51", "", &cleared); status != 200 || cleared["ban_cleared"] != true {
			t.Errorf("clear ip: %d %s", status, body)
		}
		if status, _ := f.site("GET", bearer(tok.Token), map[string]string{"X-Forwarded-For": "203.0.113.51"}); status != 200 {
			t.Errorf("after clearing the ban: %d", status)
		}
	})

	t.Run("settings", func(t *testing.T) {
		var s map[string]any
		if status, body := f.admin("PUT", "/api-token-auth/corp/settings", `{"test_endpoint_enabled":false}`, &s); status != 200 || s["test_endpoint_enabled"] != false {
			t.Fatalf("put settings: %d %s", status, body)
		}
		req, _ := http.NewRequest("GET", siteBase+"/rest/de.resolution.apitokenauth/latest/user/authTest", nil)
		resp, err := f.tester.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(data) != `{"testEndpointUnavailable":"The test endpoint has been disabled by an administrator"}` {
			t.Errorf("test endpoint after disabling: %s", data)
		}
		f.admin("GET", "/api-token-auth/corp/settings", "", &s)
		if s["test_endpoint_enabled"] != false {
			t.Errorf("get settings: %v", s)
		}
		f.admin("PUT", "/api-token-auth/corp/settings", `{"test_endpoint_enabled":true}`, &s)
	})

	t.Run("import by hash", func(t *testing.T) {
		const legacy = "legacy-token-from-the-old-system"
		var imported TokenView
		status, body := f.admin("POST", "/api-token-auth/corp/tokens", `{"user":"frank","hash":"`+tokenstore.HashSecret(legacy)+`"}`, &imported)
		if status != 201 || imported.Token != "" {
			t.Fatalf("import sha256: %d %s", status, body)
		}
		if status, _ := f.site("GET", bearer(legacy), nil); status != 200 {
			t.Errorf("imported sha256 token with Bearer: %d", status)
		}
		hash, err := bcrypt.GenerateFromPassword([]byte("frank-password"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		status, body = f.admin("POST", "/api-token-auth/corp/tokens", fmt.Sprintf(`{"user":"frank","hash":"bcrypt:%s"}`, hash), &imported)
		if status != 201 || !imported.BasicOnly {
			t.Fatalf("import bcrypt: %d %s", status, body)
		}
		if status, body := f.site("GET", basic("frank", "frank-password"), nil); status != 200 {
			t.Errorf("imported bcrypt credential with Basic: %d %s", status, body)
		}
		if status, _ := f.site("GET", basic("frank", "wrong-password"), nil); status != 401 {
			t.Errorf("wrong password: %d", status)
		}
		if status, _ := f.site("GET", bearer("frank-password"), nil); status != 401 {
			t.Errorf("bcrypt credential with Bearer: %d, want 401 (Basic only)", status)
		}
	})

	// Every answer above came after the store file was written.
	data, err := os.ReadFile(filepath.Join(f.dir, "tokens.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), alice.Token) {
		t.Error("the store file holds a secret")
	}
}
