package captcha

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	svSecret   = "sv-secret-0x4AAAAAAA-do-not-leak"
	svResponse = "widget-response-token-XYZ"
)

// siteverifyServer is a local stand-in for a provider's siteverify API.
// It records the forms it receives; answer decides the reply.
type siteverifyServer struct {
	*httptest.Server
	mu    sync.Mutex
	forms []url.Values
	ctype []string
}

func newSiteverifyServer(t *testing.T, answer func(w http.ResponseWriter, r *http.Request)) *siteverifyServer {
	t.Helper()
	s := &siteverifyServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "want POST", http.StatusMethodNotAllowed)
			return
		}
		body, _ := io.ReadAll(r.Body)
		form, _ := url.ParseQuery(string(body))
		s.mu.Lock()
		s.forms = append(s.forms, form)
		s.ctype = append(s.ctype, r.Header.Get("Content-Type"))
		s.mu.Unlock()
		answer(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *siteverifyServer) calls() []url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]url.Values(nil), s.forms...)
}

func jsonAnswer(status int, body string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// slowAnswer answers only after the client gave up (or 5 s).
func slowAnswer(w http.ResponseWriter, r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-time.After(5 * time.Second):
	}
	jsonAnswer(200, `{"success": true}`)(w, r)
}

func TestSiteVerify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		answer   func(http.ResponseWriter, *http.Request)
		response string
		timeout  time.Duration
		want     bool
		wantErr  string // substring; "" = no error
		noCall   bool
	}{
		{name: "success", answer: jsonAnswer(200, `{"success": true, "challenge_ts": "2026-01-01T00:00:00Z", "hostname": "example.com", "error-codes": []}`), want: true},
		{name: "failure", answer: jsonAnswer(200, `{"success": false, "error-codes": ["invalid-input-response"]}`), want: false},
		{name: "duplicate", answer: jsonAnswer(200, `{"success": false, "error-codes": ["timeout-or-duplicate"]}`), want: false},
		{name: "empty response is not sent", answer: jsonAnswer(200, `{"success": true}`), response: "-", want: false, noCall: true},
		{name: "timeout", answer: slowAnswer, timeout: 100 * time.Millisecond, wantErr: "no answer within 100ms"},
		{name: "status 500", answer: jsonAnswer(500, `{"success": true}`), wantErr: "status 500"},
		{name: "redirect not followed", answer: func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
		}, wantErr: "status 307"},
		{name: "not JSON", answer: jsonAnswer(200, `<html>captive portal</html>`), wantErr: "not the expected JSON"},
		{name: "no success field", answer: jsonAnswer(200, `{"ok": true}`), wantErr: `no "success" field`},
		{name: "success not a bool", answer: jsonAnswer(200, `{"success": "true"}`), wantErr: "not the expected JSON"},
		{name: "bad secret", answer: jsonAnswer(200, `{"success": false, "error-codes": ["invalid-input-secret"]}`), wantErr: "rejects the configured secret"},
		{name: "provider internal error", answer: jsonAnswer(200, `{"success": false, "error-codes": ["internal-error"]}`), wantErr: "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newSiteverifyServer(t, tt.answer)
			response := svResponse
			if tt.response == "-" {
				response = ""
			}
			got, err := siteVerify(context.Background(), newVerifyClient(), srv.URL+"/siteverify?k=v", svSecret, response, "192.0.2.7", tt.timeout)
			if got != tt.want {
				t.Errorf("ok = %v, want %v", got, tt.want)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error = %v, want one containing %q", err, tt.wantErr)
			}
			if err != nil {
				for _, s := range []string{svSecret, svResponse, "k=v"} {
					if strings.Contains(err.Error(), s) {
						t.Errorf("error %q contains %q", err, s)
					}
				}
			}
			calls := srv.calls()
			if tt.noCall {
				if len(calls) != 0 {
					t.Fatalf("siteverify called %d times for an empty response", len(calls))
				}
				return
			}
			if len(calls) != 1 {
				t.Fatalf("siteverify called %d times, want 1", len(calls))
			}
			f := calls[0]
			if f.Get("secret") != svSecret || f.Get("response") != svResponse || f.Get("remoteip") != "192.0.2.7" {
				t.Errorf("form sent = %v", f)
			}
			if ct := srv.ctype[0]; ct != "application/x-www-form-urlencoded" {
				t.Errorf("Content-Type = %q", ct)
			}
		})
	}
}

func TestSiteVerifyUnreachable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	u := srv.URL
	srv.Close() // nothing listens there any more
	ok, err := siteVerify(context.Background(), newVerifyClient(), u, svSecret, svResponse, "", time.Second)
	if ok || err == nil {
		t.Fatalf("got %v, %v; want false and an error", ok, err)
	}
	if strings.Contains(err.Error(), svSecret) {
		t.Fatalf("error leaks the secret: %v", err)
	}
}

// The provider facts the page relies on (checked against the providers'
// documentation; see the widget type).
func TestWidgets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		provider, script, class, field, verify string
	}{
		{ProviderTurnstile, "https://challenges.cloudflare.com/turnstile/v0/api.js", "cf-turnstile", "cf-turnstile-response", "https://challenges.cloudflare.com/turnstile/v0/siteverify"},
		{ProviderHCaptcha, "https://js.hcaptcha.com/1/api.js", "h-captcha", "h-captcha-response", "https://api.hcaptcha.com/siteverify"},
		{ProviderReCaptcha, "https://www.google.com/recaptcha/api.js", "g-recaptcha", "g-recaptcha-response", "https://www.google.com/recaptcha/api/siteverify"},
	}
	if len(widgets) != len(tests) {
		t.Fatalf("%d widgets, want %d", len(widgets), len(tests))
	}
	for _, tt := range tests {
		w, ok := widgets[tt.provider]
		if !ok {
			t.Errorf("%s: no widget", tt.provider)
			continue
		}
		if w.scriptURL != tt.script || w.class != tt.class || w.field != tt.field || w.verifyURL != tt.verify {
			t.Errorf("%s: got %+v", tt.provider, w)
		}
		// The script must be loadable under the page's script-src.
		if !cspAllows(w.scriptSrc, w.scriptURL) {
			t.Errorf("%s: script-src %v does not allow %s", tt.provider, w.scriptSrc, w.scriptURL)
		}
		if len(w.frameSrc) == 0 {
			t.Errorf("%s: no frame-src", tt.provider)
		}
	}
}

// cspAllows is a rough CSP source match: scheme+host (with a leading *.
// wildcard) and path prefix.
func cspAllows(sources []string, raw string) bool {
	u, _ := url.Parse(raw)
	for _, s := range sources {
		su, err := url.Parse(strings.Replace(s, "*.", "wildcard.", 1))
		if err != nil || su.Scheme != u.Scheme {
			continue
		}
		hostOK := su.Host == u.Host
		if strings.HasPrefix(su.Host, "wildcard.") {
			hostOK = strings.HasSuffix(u.Host, strings.TrimPrefix(su.Host, "wildcard"))
		}
		if hostOK && strings.HasPrefix(u.Path, su.Path) {
			return true
		}
	}
	return false
}
