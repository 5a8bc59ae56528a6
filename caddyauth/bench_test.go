package caddyauth

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-apitoken/caddy-apitoken/captcha"
	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// benchNow is the handlers' clock in the benchmarks.
var benchNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// benchSizes are the store sizes the decision is measured at: its cost
// should not depend on how many tokens the store holds.
var benchSizes = []int{10, 100_000}

// benchStore is a store file of a given size: the fixture's cast, padded
// with tokens of other users whose secrets nobody knows.
type benchStore struct {
	data    []byte            // the store file
	secrets map[string]string // the cast's secrets, by token name
}

// benchStores caches each size's file for the whole run: -count repeats
// every benchmark, and 100,000 tokens take a moment to make.
var benchStores struct {
	sync.Mutex
	bySize map[int]*benchStore
}

// benchStoreOf returns the store file with n tokens (at least the
// fixture's ten), built once per size.
func benchStoreOf(b *testing.B, n int) *benchStore {
	b.Helper()
	benchStores.Lock()
	defer benchStores.Unlock()
	if s, ok := benchStores.bySize[n]; ok {
		return s
	}
	f := newFixture(b, benchNow)
	data, err := os.ReadFile(f.path)
	if err != nil {
		b.Fatal(err)
	}
	if n > len(f.tokens) {
		// Pad the document as it is: the fixture's users and tokens stay
		// as written, the padding is appended.
		var doc struct {
			Version int               `json:"version"`
			Users   json.RawMessage   `json:"users"`
			Tokens  []json.RawMessage `json:"tokens"`
		}
		if err := json.Unmarshal(data, &doc); err != nil {
			b.Fatal(err)
		}
		created := benchNow.Add(-48 * time.Hour)
		for i := len(doc.Tokens); i < n; i++ {
			id := "pad" + strconv.Itoa(i)
			tok, err := json.Marshal(tokenstore.Token{
				ID:      id,
				User:    "user" + strconv.Itoa(i%1000),
				Scope:   tokenstore.ScopeReadWrite,
				Hash:    tokenstore.HashSecret("unknown secret of " + id),
				Created: created,
			})
			if err != nil {
				b.Fatal(err)
			}
			doc.Tokens = append(doc.Tokens, tok)
		}
		if data, err = json.Marshal(doc); err != nil {
			b.Fatal(err)
		}
	}
	s := &benchStore{data: data, secrets: f.secrets}
	if benchStores.bySize == nil {
		benchStores.bySize = map[int]*benchStore{}
	}
	benchStores.bySize[n] = s
	return s
}

// write puts the store file into b's temporary directory. The file is
// dated an hour back: the file store re-reads a file modified in the last
// few seconds on every poll, which at 100,000 tokens would be measured
// along with the benchmarks that follow.
func (s *benchStore) write(b *testing.B) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "tokens.json")
	if err := os.WriteFile(path, s.data, 0o600); err != nil {
		b.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path, old, old); err != nil {
		b.Fatal(err)
	}
	return path
}

// benchProvision provisions a handler on the store file at path, as
// provision does for tests.
func benchProvision(b *testing.B, path, realm string, lockout *captcha.Config) *Handler {
	b.Helper()
	h := &Handler{
		Realm:   realm,
		Store:   tokenstore.Config{Type: tokenstore.TypeFile, Path: path},
		Lockout: lockout,
	}
	storage := `{"module": "file_system", "root": ` + strconv.Quote(b.TempDir()) + `}`
	ctx, err := caddy.ProvisionContext(&caddy.Config{StorageRaw: json.RawMessage(storage)})
	if err != nil {
		b.Fatal(err)
	}
	if err := h.Provision(ctx); err != nil {
		b.Fatalf("provision: %v", err)
	}
	b.Cleanup(func() {
		if err := h.Cleanup(); err != nil {
			b.Errorf("cleanup: %v", err)
		}
	})
	h.now = func() time.Time { return benchNow }
	return h
}

// benchRequest is a request as Caddy hands it to the handler, with the
// replacer and the client IP in its context; it can be served repeatedly.
func benchRequest(method, authz string) (*http.Request, netip.Addr) {
	r := httptest.NewRequest(method, "/protected", nil)
	if authz != "" {
		r.Header.Set("Authorization", authz)
	}
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "127.0.0.1"})
	r = r.WithContext(ctx)
	return r, clientIP(r)
}

// BenchmarkDecision measures authenticate, the whole decision (checks and
// lockout counting) without the answer, for each outcome. Issue 6's
// targets: a warm-cache success in at most 1 µs and 3 allocations, and
// the same cost with 10 and 100,000 tokens.
func BenchmarkDecision(b *testing.B) {
	zero, many := 0, math.MaxInt
	for _, n := range benchSizes {
		store := benchStoreOf(b, n)
		path := store.write(b)
		s := store.secrets
		// Successes run with the default lockout, as deployed. Failures
		// run without one, or the client IP would soon be banned and every
		// failure benchmark would measure the ban; one failure runs with
		// counting on but thresholds never reached, to show what counting
		// costs.
		deployed := benchProvision(b, path, fmt.Sprintf("bench-%d-default", n), nil)
		quiet := benchProvision(b, path, fmt.Sprintf("bench-%d-quiet", n),
			&captcha.Config{MaxFailures: &zero, IPMaxFailures: &zero})
		counting := benchProvision(b, path, fmt.Sprintf("bench-%d-counting", n),
			&captcha.Config{MaxFailures: &many, IPMaxFailures: &many})

		badChecksum := s[tokRW][:len(s[tokRW])-1] + "x"
		if s[tokRW][len(s[tokRW])-1] == 'x' {
			badChecksum = s[tokRW][:len(s[tokRW])-1] + "y"
		}
		tests := []struct {
			name   string
			h      *Handler
			method string
			authz  string
			want   outcome
		}{
			{"bearer_ok", deployed, http.MethodGet, "Bearer " + s[tokRW], authenticated},
			{"basic_ok", deployed, http.MethodGet, basicAuth("alice", s[tokRW]), authenticated},
			{"no_credentials", quiet, http.MethodGet, "", noCredentials},
			{"bad_checksum", quiet, http.MethodGet, "Bearer " + badChecksum, invalidToken},
			{"unknown_token", quiet, http.MethodGet, "Bearer not-a-real-token-0123456789", invalidToken},
			{"unknown_token_lockout_on", counting, http.MethodGet, "Bearer not-a-real-token-0123456789", invalidToken},
			{"revoked", quiet, http.MethodGet, "Bearer " + s[tokRevoked], invalidToken},
			{"wrong_user", quiet, http.MethodGet, basicAuth("mallory", s[tokRW]), invalidToken},
			{"ip_not_permitted", quiet, http.MethodGet, "Bearer " + s[tokIPLimited], ipNotPermitted},
			{"header_missing", quiet, http.MethodGet, "Bearer " + s[tokHeaders], headerMismatch},
			{"scope", quiet, http.MethodPost, "Bearer " + s[tokRO], scopeTooNarrow},
		}
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			for _, tc := range tests {
				b.Run(tc.name, func(b *testing.B) {
					r, ip := benchRequest(tc.method, tc.authz)
					if got := tc.h.authenticate(r, ip).outcome; got != tc.want {
						b.Fatalf("outcome = %s, want %s", got.info().code, tc.want.info().code)
					}
					b.ReportAllocs()
					var v verdict
					for b.Loop() {
						v = tc.h.authenticate(r, ip)
					}
					if v.outcome != tc.want {
						b.Fatalf("outcome = %s after %d runs, want %s", v.outcome.info().code, b.N, tc.want.info().code)
					}
				})
			}
		})
	}
}

// benchWriter is a ResponseWriter that keeps only the headers.
type benchWriter struct {
	header http.Header
	status int
}

func (w *benchWriter) Header() http.Header         { return w.header }
func (w *benchWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *benchWriter) WriteHeader(status int)      { w.status = status }

// BenchmarkServeHTTP measures the whole middleware on a success: the
// decision, recording the use, the placeholders and the success headers,
// up to a next handler that does nothing. Every round starts from a fresh
// request with its own replacer, as Caddy's server makes for each
// request; caddy_setup_only measures that setup alone, so the plugin's
// own cost is the difference between the two.
func BenchmarkServeHTTP(b *testing.B) {
	for _, n := range benchSizes {
		store := benchStoreOf(b, n)
		h := benchProvision(b, store.write(b), fmt.Sprintf("bench-%d-serve", n), nil)
		base, _ := benchRequest(http.MethodGet, "Bearer "+store.secrets[tokRW])
		authz := base.Header.Get("Authorization")
		passed := 0
		next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
			passed++
			return nil
		})
		w := &benchWriter{header: http.Header{}}
		// fresh rebuilds the request as the server hands it over. The
		// handler removes the Authorization header before passing the
		// request on: it is put back too.
		var r http.Request
		fresh := func() {
			r = *base
			r.Header.Set("Authorization", authz)
			caddyhttp.NewTestReplacer(&r)
			clear(w.header)
		}

		b.Run(fmt.Sprintf("tokens=%d/caddy_setup_only", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				fresh()
				if err := next.ServeHTTP(w, &r); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("tokens=%d/bearer_ok", n), func(b *testing.B) {
			passed = 0
			b.ReportAllocs()
			for b.Loop() {
				fresh()
				if err := h.ServeHTTP(w, &r, next); err != nil {
					b.Fatal(err)
				}
			}
			// The Atlassian headers are set with their exact spelling, which
			// Header.Get would not find.
			seraph := w.header[headerSeraphLoginReason]
			if passed != b.N || w.status != 0 || len(seraph) != 1 || seraph[0] != "OK" {
				b.Fatalf("passed on %d of %d, status %d, %s %q: not a success",
					passed, b.N, w.status, headerSeraphLoginReason, seraph)
			}
			repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
			if id, _ := repl.GetString("http.auth.user.id"); id != "alice" {
				b.Fatalf("{http.auth.user.id} = %q, want alice", id)
			}
		})
	}
}

// BenchmarkServeHTTPFailure measures the middleware answering a flood of
// unknown well-formed tokens, lockout off: the decision, the failure
// headers and body, and the log line's fields (logged to a no-op logger:
// writing it is the log's own cost, not the handler's).
func BenchmarkServeHTTPFailure(b *testing.B) {
	zero := 0
	for _, n := range benchSizes {
		store := benchStoreOf(b, n)
		h := benchProvision(b, store.write(b), fmt.Sprintf("bench-%d-serve-failure", n),
			&captcha.Config{MaxFailures: &zero, IPMaxFailures: &zero})
		h.logger = zap.NewNop()
		unknown, err := tokenstore.GenerateSecret(tokenstore.DefaultPrefix)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("tokens=%d/unknown_token", n), func(b *testing.B) {
			r, _ := benchRequest(http.MethodGet, "Bearer "+unknown)
			w := &benchWriter{header: http.Header{}}
			next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
				b.Fatal("a failure was passed on")
				return nil
			})
			b.ReportAllocs()
			for b.Loop() {
				clear(w.header)
				if err := h.ServeHTTP(w, r, next); err != nil {
					b.Fatal(err)
				}
			}
			if w.status != http.StatusUnauthorized || len(w.header.Values("WWW-Authenticate")) != 2 {
				b.Fatalf("status %d, WWW-Authenticate %q: not the failure", w.status, w.header.Values("WWW-Authenticate"))
			}
		})
	}
}
