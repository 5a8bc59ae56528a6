package caddyauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// provision builds a handler on the fixture's store, as Caddy would.
func provision(t *testing.T, f *fixture, now time.Time, configure func(*Handler)) *Handler {
	t.Helper()
	h := &Handler{Store: tokenstore.Config{Type: tokenstore.TypeFile, Path: f.path}}
	if configure != nil {
		configure(h)
	}
	// A context with its own storage, as a loaded config has, so that
	// lockout state is kept where this test alone sees it.
	storage := `{"module": "file_system", "root": ` + strconv.Quote(t.TempDir()) + `}`
	ctx, err := caddy.ProvisionContext(&caddy.Config{StorageRaw: json.RawMessage(storage)})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("provision: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	h.now = func() time.Time { return now }
	return h
}

func basicAuth(user, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+secret))
}

// request is one request to the handler under test.
type request struct {
	method string
	path   string
	authz  string
	ip     string
	header map[string]string
}

// result is what came back, and whether the next handler ran.
type result struct {
	rec        *httptest.ResponseRecorder
	nextCalled bool
	nextAuthz  string
	repl       *caddy.Replacer
}

func serve(t *testing.T, h *Handler, req request) result {
	t.Helper()
	if req.method == "" {
		req.method = http.MethodGet
	}
	if req.path == "" {
		req.path = "/protected"
	}
	if req.ip == "" {
		req.ip = "127.0.0.1"
	}
	r := httptest.NewRequest(req.method, req.path, nil)
	if req.authz != "" {
		r.Header.Set("Authorization", req.authz)
	}
	for k, v := range req.header {
		r.Header.Set(k, v)
	}
	repl := caddy.NewReplacer()
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: req.ip})
	r = r.WithContext(ctx)

	res := result{rec: httptest.NewRecorder(), repl: repl}
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		res.nextCalled = true
		res.nextAuthz = r.Header.Get("Authorization")
		w.WriteHeader(http.StatusOK)
		return nil
	})
	if err := h.ServeHTTP(res.rec, r, next); err != nil {
		t.Fatalf("ServeHTTP returned an error: %v", err)
	}
	return res
}

func message(t *testing.T, rec *httptest.ResponseRecorder) string {
	t.Helper()
	var body struct {
		Message string `json:"message"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %q is not the JSON failure answer: %v", rec.Body.String(), err)
	}
	return body.Message
}

func TestChecks(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	f := newFixture(t, now)
	plain := provision(t, f, now, nil)
	restricted := provision(t, f, now, func(h *Handler) {
		h.AllowGroups = []string{"ops"}
		h.AllowIPs = []string{"127.0.0.0/8", "192.0.2.0/24"}
	})
	s := f.secrets

	tests := []struct {
		name    string
		h       *Handler
		req     request
		status  int
		message string
		seraph  string
	}{
		// Check 1.
		{"no header", plain, request{}, 401, "No valid bearer- or basic auth header present", "AUTHENTICATED_FAILED"},
		{"unknown scheme", plain, request{authz: "Token " + s[tokRW]}, 401, "No valid bearer- or basic auth header present", "AUTHENTICATED_FAILED"},
		{"bearer without token", plain, request{authz: "Bearer "}, 401, "No valid bearer- or basic auth header present", "AUTHENTICATED_FAILED"},
		{"basic not base64", plain, request{authz: "Basic %%%"}, 401, "No valid bearer- or basic auth header present", "AUTHENTICATED_FAILED"},
		{"basic without colon", plain, request{authz: "Basic " + base64.StdEncoding.EncodeToString([]byte("alice"))}, 401, "No valid bearer- or basic auth header present", "AUTHENTICATED_FAILED"},
		{"basic empty token", plain, request{authz: basicAuth("alice", "")}, 401, "No valid bearer- or basic auth header present", "AUTHENTICATED_FAILED"},
		// Check 4.
		{"unknown token", plain, request{authz: "Bearer not-a-real-token"}, 401, "Token is invalid, has been revoked or expired", "AUTHENTICATED_FAILED"},
		{"bad checksum", plain, request{authz: "Bearer " + s[tokRW][:len(s[tokRW])-1] + "x"}, 401, "Token is invalid, has been revoked or expired", "AUTHENTICATED_FAILED"},
		{"expired", plain, request{authz: "Bearer " + s[tokExpired]}, 401, "Token is invalid, has been revoked or expired", "AUTHENTICATED_FAILED"},
		{"revoked", plain, request{authz: "Bearer " + s[tokRevoked]}, 401, "Token is invalid, has been revoked or expired", "AUTHENTICATED_FAILED"},
		{"basic wrong user", plain, request{authz: basicAuth("mallory", s[tokRW])}, 401, "Token is invalid, has been revoked or expired", "AUTHENTICATED_FAILED"},
		// Check 5.
		{"disabled user", plain, request{authz: "Bearer " + s[tokBob]}, 403, "You are not permitted to use API tokens", "AUTHORISATION_FAILED"},
		{"user not in allow_groups", restricted, request{authz: "Bearer " + s[tokCarol]}, 403, "You are not permitted to use API tokens", "AUTHORISATION_FAILED"},
		// Check 6.
		{"ip outside allow_ips", restricted, request{authz: "Bearer " + s[tokRW], ip: "198.51.100.7"}, 403, "IP address 198.51.100.7 not permitted", "AUTHORISATION_FAILED"},
		{"ip outside token's allowed_ips", plain, request{authz: "Bearer " + s[tokIPLimited]}, 403, "IP address 127.0.0.1 not permitted", "AUTHORISATION_FAILED"},
		// Check 7: names are checked in sorted order, so X-Env comes first.
		{"required headers missing", plain, request{authz: "Bearer " + s[tokHeaders]}, 403, "Required request header X-Env is missing or has the wrong value", "AUTHORISATION_FAILED"},
		{"required header wrong", plain, request{authz: "Bearer " + s[tokHeaders], header: map[string]string{"X-Env": "prod", fixtureTeamHdr: "red"}}, 403, "Required request header X-Team is missing or has the wrong value", "AUTHORISATION_FAILED"},
		// Check 8.
		{"read-only token POST", plain, request{authz: "Bearer " + s[tokRO], method: http.MethodPost}, 403, "The token scope is read-only and only covers GET, HEAD and OPTIONS requests. Request method type was POST.", "AUTHORISATION_FAILED"},
		{"read-only token DELETE", plain, request{authz: basicAuth("alice", s[tokRO]), method: http.MethodDelete}, 403, "The token scope is read-only and only covers GET, HEAD and OPTIONS requests. Request method type was DELETE.", "AUTHORISATION_FAILED"},
		// Successes.
		{"bearer", plain, request{authz: "Bearer " + s[tokRW], method: http.MethodPut}, 200, "", "OK"},
		{"basic", plain, request{authz: basicAuth("alice", s[tokRW])}, 200, "", "OK"},
		{"scheme case-insensitive", plain, request{authz: "bearer " + s[tokRW]}, 200, "", "OK"},
		{"read-only GET", plain, request{authz: "Bearer " + s[tokRO]}, 200, "", "OK"},
		{"read-only HEAD", plain, request{authz: "Bearer " + s[tokRO], method: http.MethodHead}, 200, "", "OK"},
		{"read-only OPTIONS", plain, request{authz: "Bearer " + s[tokRO], method: http.MethodOptions}, 200, "", "OK"},
		{"token's allowed_ips", plain, request{authz: "Bearer " + s[tokIPLimited], ip: "192.0.2.44"}, 200, "", "OK"},
		{"required headers present", plain, request{authz: "Bearer " + s[tokHeaders], header: map[string]string{"X-Env": "prod", fixtureTeamHdr: "blue"}}, 200, "", "OK"},
		{"imported token without prefix", plain, request{authz: "Bearer " + s[tokImported]}, 200, "", "OK"},
		{"user in allow_groups", restricted, request{authz: "Bearer " + s[tokRW], ip: "192.0.2.1"}, 200, "", "OK"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := serve(t, tc.h, tc.req)
			if res.rec.Code != tc.status {
				t.Fatalf("status = %d, want %d (body %s)", res.rec.Code, tc.status, res.rec.Body)
			}
			if got := res.rec.Header()[headerSeraphLoginReason]; len(got) != 1 || got[0] != tc.seraph {
				t.Errorf("%s = %q, want %q", headerSeraphLoginReason, got, tc.seraph)
			}
			if tc.status == 200 {
				if !res.nextCalled {
					t.Fatal("next handler not called on success")
				}
				return
			}
			if res.nextCalled {
				t.Fatal("a failed request was passed on")
			}
			if got := message(t, res.rec); got != tc.message {
				t.Errorf("message = %q, want %q", got, tc.message)
			}
			if ct := res.rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			challenges := res.rec.Header().Values("WWW-Authenticate")
			if tc.status == 401 {
				want := []string{`Basic realm="default"`, `Bearer realm="default"`}
				if strings.Join(challenges, "|") != strings.Join(want, "|") {
					t.Errorf("WWW-Authenticate = %q, want %q", challenges, want)
				}
			} else if len(challenges) != 0 {
				t.Errorf("WWW-Authenticate on a %d: %q", tc.status, challenges)
			}
		})
	}
}

func TestSuccessSetsPlaceholdersAndHeaders(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	f := newFixture(t, now)
	h := provision(t, f, now, nil)

	res := serve(t, h, request{authz: basicAuth("alice", f.secrets[tokRO])})
	want := map[string]string{
		"http.auth.user.id":         "alice",
		"http.auth.user.token_id":   f.tokens[tokRO].ID,
		"http.auth.user.token_name": tokRO,
		"http.auth.user.scope":      "read-only",
		"http.auth.user.groups":     "developers,ops",
	}
	for key, value := range want {
		if got, _ := res.repl.GetString(key); got != value {
			t.Errorf("{%s} = %q, want %q", key, got, value)
		}
	}
	if got := res.rec.Header()[headerAUsername]; len(got) != 1 || got[0] != "alice" {
		t.Errorf("%s = %q, want alice", headerAUsername, got)
	}
	if res.nextAuthz != "" {
		t.Errorf("Authorization passed on: %q", res.nextAuthz)
	}
	if got := res.rec.Header().Get(headerAPITokenExpires); got != "" {
		t.Errorf("%s set for a token that never expires: %q", headerAPITokenExpires, got)
	}

	// A token expiring within 14 days says when.
	res = serve(t, h, request{authz: "Bearer " + f.secrets[tokSoon]})
	if got, want := res.rec.Header().Get(headerAPITokenExpires), now.Add(72*time.Hour).Format(time.RFC3339); got != want {
		t.Errorf("%s = %q, want %q", headerAPITokenExpires, got, want)
	}
}

func TestOptions(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	f := newFixture(t, now)

	t.Run("keep_authorization", func(t *testing.T) {
		h := provision(t, f, now, func(h *Handler) { h.KeepAuthorization = true })
		authz := "Bearer " + f.secrets[tokRW]
		if res := serve(t, h, request{authz: authz}); res.nextAuthz != authz {
			t.Errorf("next handler saw Authorization %q, want it kept", res.nextAuthz)
		}
	})

	t.Run("anonymous allow", func(t *testing.T) {
		h := provision(t, f, now, func(h *Handler) { h.Anonymous = anonymousAllow })
		res := serve(t, h, request{})
		if !res.nextCalled || res.rec.Code != 200 {
			t.Fatalf("request without credentials not passed on: %d", res.rec.Code)
		}
		if _, ok := res.repl.Get("http.auth.user.id"); ok {
			t.Error("user placeholder set for an anonymous request")
		}
		// A header that is present but wrong is still refused.
		res = serve(t, h, request{authz: "Bearer nope"})
		if res.nextCalled || res.rec.Code != 401 {
			t.Errorf("bad credentials with anonymous allow: %d, passed on %v", res.rec.Code, res.nextCalled)
		}
	})

	t.Run("atlassian_headers off", func(t *testing.T) {
		off := false
		h := provision(t, f, now, func(h *Handler) { h.AtlassianHeaders = &off })
		for _, req := range []request{{authz: "Bearer " + f.secrets[tokRW]}, {}} {
			res := serve(t, h, req)
			for _, name := range []string{headerSeraphLoginReason, headerAUsername, headerAuthenticationDenied} {
				if v := res.rec.Header()[name]; v != nil {
					t.Errorf("%s sent with atlassian_headers off: %q", name, v)
				}
			}
		}
	})

	t.Run("realm in challenges", func(t *testing.T) {
		h := provision(t, f, now, func(h *Handler) { h.Realm = "jira" })
		res := serve(t, h, request{})
		if got := res.rec.Header().Values("WWW-Authenticate"); len(got) != 2 || got[0] != `Basic realm="jira"` || got[1] != `Bearer realm="jira"` {
			t.Errorf("WWW-Authenticate = %q", got)
		}
	})

	t.Run("token_prefix", func(t *testing.T) {
		h := provision(t, f, now, func(h *Handler) { h.TokenPrefix = "xyz_" })
		// The fixture's cat_ tokens are now "imported": looked up, not
		// checked for a checksum, and still valid.
		if res := serve(t, h, request{authz: "Bearer " + f.secrets[tokRW]}); res.rec.Code != 200 {
			t.Errorf("cat_ token with prefix xyz_: %d", res.rec.Code)
		}
	})
}

// failingStore is a store that cannot be reached. The file store always
// answers from memory, so an outage can only be shown with a stand-in.
type failingStore struct{ tokenstore.Store }

func (failingStore) LookupToken(context.Context, tokenstore.Digest) (*tokenstore.Token, error) {
	return nil, errors.Join(tokenstore.ErrUnavailable, errors.New("connection refused"))
}

func (failingStore) Settings(context.Context) (tokenstore.Settings, error) {
	return tokenstore.Settings{}, tokenstore.ErrUnavailable
}

func TestStoreUnavailableFailsClosed(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	f := newFixture(t, now)
	h := provision(t, f, now, nil)
	h.store = failingStore{h.store}

	res := serve(t, h, request{authz: "Bearer " + f.secrets[tokRW]})
	if res.rec.Code != http.StatusServiceUnavailable || res.nextCalled {
		t.Fatalf("status %d, passed on %v; want 503, not passed on", res.rec.Code, res.nextCalled)
	}
	if got := message(t, res.rec); got != "Token store unavailable" {
		t.Errorf("message = %q", got)
	}
	res = serve(t, h, request{authz: "Bearer " + f.secrets[tokRW], path: DefaultTestEndpoint})
	if got := res.rec.Body.String(); got != `{"isSuccessfulAuthentication":false,"authenticationFailureDetails":"Token store unavailable"}` {
		t.Errorf("test endpoint answered %s", got)
	}
}

func TestParseAuthorization(t *testing.T) {
	tests := []struct {
		header string
		want   credentials
		ok     bool
	}{
		{"Bearer abc", credentials{secret: "abc"}, true},
		{"BEARER  abc ", credentials{secret: "abc"}, true},
		{"Bearer a b", credentials{}, false},
		{"Bearer", credentials{}, false},
		{basicAuth("u", "p:with:colons"), credentials{basic: true, username: "u", secret: "p:with:colons"}, true},
		{basicAuth("", "p"), credentials{basic: true, secret: "p"}, true},
		{"Basic", credentials{}, false},
		{"Basic not*base64", credentials{}, false},
		// Longer than decodeBase64's stack buffer.
		{basicAuth(strings.Repeat("u", 300), "p"), credentials{basic: true, username: strings.Repeat("u", 300), secret: "p"}, true},
		{"Basic " + strings.Repeat("*", 400), credentials{}, false},
		{"Digest abc", credentials{}, false},
		{"", credentials{}, false},
	}
	for _, tc := range tests {
		got, ok := parseAuthorization(tc.header)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseAuthorization(%q) = %+v, %v; want %+v, %v", tc.header, got, ok, tc.want, tc.ok)
		}
	}
}

// TestDecisionAllocations holds the warm-cache decision to issue 6's
// budget of at most 3 allocations (BenchmarkDecision measures its time).
func TestDecisionAllocations(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	f := newFixture(t, now)
	h := provision(t, f, now, nil)
	for name, authz := range map[string]string{
		"bearer": "Bearer " + f.secrets[tokRW],
		"basic":  basicAuth("alice", f.secrets[tokRW]),
	} {
		r, ip := benchRequest(http.MethodGet, authz)
		allocs := testing.AllocsPerRun(200, func() {
			if v := h.authenticate(r, ip); v.outcome != authenticated {
				t.Fatalf("%s: outcome %s, want ok", name, v.outcome.info().code)
			}
		})
		t.Logf("%s success: %v allocations", name, allocs)
		if allocs > 3 {
			t.Errorf("%s success allocates %v times, want at most 3", name, allocs)
		}
	}
}

func TestClientIP(t *testing.T) {
	for in, want := range map[string]string{"127.0.0.1": "127.0.0.1", "::ffff:10.1.2.3": "10.1.2.3", "::1": "::1", "junk": "invalid IP"} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: in}))
		if got := clientIP(r); got.String() != want {
			t.Errorf("clientIP(%q) = %s, want %s", in, got, want)
		}
	}
	if tokenstore.PrefixesContain([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, netip.Addr{}) {
		t.Error("an invalid client address passed an allowlist")
	}
}
