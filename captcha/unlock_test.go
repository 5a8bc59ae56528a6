package captcha

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"html/template"
	"image/png"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

var (
	unlockIP      = netip.MustParseAddr("192.0.2.44")
	unlockOtherIP = netip.MustParseAddr("198.51.100.9")
)

const (
	aliceToken = "cat_aliceSecretToken0123456789abcdef"
	bobToken   = "cat_bobSecretToken0123456789abcdefgh"
)

// recordingClearer is a Clearer that records its calls.
type recordingClearer struct {
	mu     sync.Mutex
	calls  []clearCall
	active bool // what ClearChallenge answers
}

type clearCall struct {
	user string
	ip   netip.Addr
}

func (c *recordingClearer) ClearChallenge(user string, ip netip.Addr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, clearCall{user, ip})
	return c.active
}

func (c *recordingClearer) recorded() []clearCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]clearCall(nil), c.calls...)
}

// fakeTokens is a TokenChecker over user -> token.
type fakeTokens struct {
	tokens map[string]string
	err    error
	calls  atomic.Int32
}

func (f *fakeTokens) check(_ context.Context, user, secret string) (bool, error) {
	f.calls.Add(1)
	if f.err != nil {
		return false, f.err
	}
	tok, ok := f.tokens[user]
	return ok && tok == secret, nil
}

type unlockFixture struct {
	page    *UnlockPage
	puzzles *PuzzleStore
	clock   *puzzleClock
	clearer *recordingClearer
	tokens  *fakeTokens
	logs    *observer.ObservedLogs
	path    string
}

func newUnlockFixture(t *testing.T, unlockPath string, p Provider) *unlockFixture {
	t.Helper()
	clock := newPuzzleClock()
	core, logs := observer.New(zapcore.DebugLevel)
	f := &unlockFixture{
		puzzles: NewPuzzleStore(0, 0, clock.Now),
		clock:   clock,
		clearer: &recordingClearer{active: true},
		tokens:  &fakeTokens{tokens: map[string]string{"alice": aliceToken, "bob": bobToken}},
		logs:    logs,
	}
	s := (*Config)(nil).Settings()
	if unlockPath != "" {
		s.UnlockPath = unlockPath
	}
	if p.Name != "" {
		s.Captcha = p
	}
	f.path = s.UnlockPath
	f.page = NewUnlockPage(s, f.puzzles, f.clearer, f.tokens.check, zap.New(core))
	f.page.Now = clock.Now
	return f
}

func (f *unlockFixture) do(t *testing.T, method, target string, body string, ip netip.Addr) (*httptest.ResponseRecorder, bool) {
	t.Helper()
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(method, target, nil)
	} else {
		r = httptest.NewRequest(method, target, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	w := httptest.NewRecorder()
	handled := f.page.ServeHTTP(w, r, ip)
	return w, handled
}

func (f *unlockFixture) get(t *testing.T) *httptest.ResponseRecorder {
	t.Helper()
	w, handled := f.do(t, http.MethodGet, f.path, "", unlockIP)
	if !handled || w.Code != http.StatusOK {
		t.Fatalf("GET %s: handled %v, status %d", f.path, handled, w.Code)
	}
	return w
}

func (f *unlockFixture) post(t *testing.T, form url.Values, ip netip.Addr) *httptest.ResponseRecorder {
	t.Helper()
	w, handled := f.do(t, http.MethodPost, f.path, form.Encode(), ip)
	if !handled {
		t.Fatalf("POST %s not handled", f.path)
	}
	return w
}

// solvedForm is a builtin form with a fresh puzzle and its right answer.
func (f *unlockFixture) solvedForm(t *testing.T, user, token string) (url.Values, string) {
	t.Helper()
	id := puzzleIDOf(t, f.get(t).Body.String())
	ans, ok := f.puzzles.Peek(id)
	if !ok {
		t.Fatalf("puzzle %q in the page is not live", id)
	}
	return url.Values{"username": {user}, "token": {token}, "puzzle": {id}, "answer": {ans}}, id
}

var (
	puzzleRe = regexp.MustCompile(`<input id="puzzle" name="puzzle" type="hidden" value="([A-Za-z0-9_-]+)">`)
	resultRe = regexp.MustCompile(`<p id="result" class="result( [a-z]+)?" role="status" aria-live="polite">([^<]*)</p>`)
	nonceRe  = regexp.MustCompile(`<style nonce="([A-Za-z0-9_-]{22})">`)
)

func puzzleIDOf(t *testing.T, page string) string {
	t.Helper()
	m := puzzleRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no puzzle id in page:\n%s", page)
	}
	return m[1]
}

// resultOf returns the text of the result element and its kind.
func resultOf(t *testing.T, page string) (text, kind string) {
	t.Helper()
	m := resultRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no result element in page:\n%s", page)
	}
	return m[2], strings.TrimSpace(m[1])
}

func esc(s string) string { return template.HTMLEscapeString(s) }

// checkHeaders checks the security headers and returns the page's nonce
// ("" for non-HTML answers).
func checkHeaders(t *testing.T, w *httptest.ResponseRecorder, wantCSP func(nonce string) string) string {
	t.Helper()
	h := w.Result().Header
	for name, want := range map[string]string{
		"X-Content-Type-Options": "nosniff",
		"Referrer-Policy":        "no-referrer",
		"Cache-Control":          "no-store",
		"X-Frame-Options":        "DENY",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	nonce := ""
	if m := nonceRe.FindStringSubmatch(w.Body.String()); m != nil {
		nonce = m[1]
	}
	if got, want := h.Get("Content-Security-Policy"), wantCSP(nonce); got != want {
		t.Errorf("Content-Security-Policy =\n  %q\nwant\n  %q", got, want)
	}
	return nonce
}

func builtinCSP(nonce string) string {
	return "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'nonce-" + nonce + "'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
}

func nothingCSP(string) string { return cspNothing }

// assertNoLeak fails if any log entry or the page contains one of secrets.
func assertNoLeak(t *testing.T, logs *observer.ObservedLogs, page string, secrets ...string) {
	t.Helper()
	for _, e := range logs.All() {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		for _, s := range secrets {
			if s != "" && strings.Contains(line, s) {
				t.Errorf("log entry %q leaks %q", line, s)
			}
		}
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(page, s) {
			t.Errorf("page leaks %q", s)
		}
	}
}

func TestUnlockGETBuiltin(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"", "/auth/unlock", "/auth/unlock/"} {
		t.Run("path="+path, func(t *testing.T) {
			t.Parallel()
			f := newUnlockFixture(t, path, Provider{})
			w := f.get(t)
			page := w.Body.String()
			if ct := w.Header().Get("Content-Type"); ct != "text/html; charset=utf-8" {
				t.Errorf("Content-Type = %q", ct)
			}
			nonce := checkHeaders(t, w, builtinCSP)
			if nonce == "" {
				t.Fatal("no nonce on the style block")
			}
			id := puzzleIDOf(t, page)
			if _, ok := f.puzzles.Digits(id); !ok {
				t.Fatalf("page shows puzzle %q that the store does not have", id)
			}
			asset := strings.TrimSuffix(f.path, "/") + "/captcha/" + id
			for _, want := range []string{
				`<form id="unlock" method="post" action="` + f.path + `" autocomplete="off">`,
				`<label for="username">Username</label>`,
				`<input id="username" name="username" type="text"`,
				`<label for="token">API token</label>`,
				`<input id="token" name="token" type="password" autocomplete="off"`,
				`<img id="captcha-image" src="` + asset + `.png" width="240" height="80" alt="`,
				`<audio id="captcha-audio" controls preload="none" src="` + asset + `.wav"></audio>`,
				`<a id="captcha-audio-link" href="` + asset + `.wav">`,
				`<label for="answer">`,
				`<input id="answer" name="answer" type="text" inputmode="numeric" autocomplete="off"`,
				`<button id="submit" type="submit">`,
				`<p id="explain">` + esc(MsgExplain) + `</p>`,
				`<p id="result" class="result" role="status" aria-live="polite"></p>`,
			} {
				if !strings.Contains(page, want) {
					t.Errorf("page lacks %s", want)
				}
			}
			// Nothing the CSP would block, and nothing inline but the
			// nonced style block.
			for _, bad := range []string{"<script", "style=", "onclick", "onload", "javascript:", "<iframe"} {
				if strings.Contains(page, bad) {
					t.Errorf("page contains %q", bad)
				}
			}
			if n := strings.Count(page, "<style"); n != 1 {
				t.Errorf("%d style blocks, want 1", n)
			}
			// A fresh nonce and puzzle per response.
			w2 := f.get(t)
			if n2 := checkHeaders(t, w2, builtinCSP); n2 == nonce {
				t.Error("nonce reused across responses")
			}
			if id2 := puzzleIDOf(t, w2.Body.String()); id2 == id {
				t.Error("puzzle reused across responses")
			}
		})
	}
}

func TestUnlockGETProviders(t *testing.T) {
	t.Parallel()
	const secret = "provider-secret-must-not-show"
	tests := []struct {
		provider, script, class string
		csp                     func(nonce string) string
	}{
		{ProviderTurnstile, "https://challenges.cloudflare.com/turnstile/v0/api.js", "cf-turnstile", func(n string) string {
			return "default-src 'none'; script-src https://challenges.cloudflare.com; frame-src https://challenges.cloudflare.com; style-src 'nonce-" + n + "'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
		}},
		{ProviderHCaptcha, "https://js.hcaptcha.com/1/api.js", "h-captcha", func(n string) string {
			return "default-src 'none'; script-src https://hcaptcha.com https://*.hcaptcha.com; frame-src https://hcaptcha.com https://*.hcaptcha.com; connect-src https://hcaptcha.com https://*.hcaptcha.com; style-src 'nonce-" + n + "' https://hcaptcha.com https://*.hcaptcha.com; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
		}},
		{ProviderReCaptcha, "https://www.google.com/recaptcha/api.js", "g-recaptcha", func(n string) string {
			return "default-src 'none'; script-src https://www.google.com/recaptcha/ https://www.gstatic.com/recaptcha/; frame-src https://www.google.com/recaptcha/ https://recaptcha.google.com/recaptcha/; style-src 'nonce-" + n + "'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.provider, func(t *testing.T) {
			t.Parallel()
			f := newUnlockFixture(t, "", Provider{Name: tt.provider, SiteKey: `site-key-"1"<x>`, Secret: secret})
			w := f.get(t)
			page := w.Body.String()
			checkHeaders(t, w, tt.csp)
			for _, want := range []string{
				`<script src="` + tt.script + `" async defer></script>`,
				`<div id="captcha-widget" class="` + tt.class + `" data-sitekey="site-key-&#34;1&#34;&lt;x&gt;"></div>`,
				`<form id="unlock" method="post" action="` + DefaultUnlockPath + `"`,
				`<input id="username" name="username"`,
				`<input id="token" name="token" type="password" autocomplete="off"`,
				`<noscript>`,
			} {
				if !strings.Contains(page, want) {
					t.Errorf("page lacks %s", want)
				}
			}
			for _, bad := range []string{secret, `id="captcha-image"`, `id="puzzle"`, `<audio`} {
				if strings.Contains(page, bad) {
					t.Errorf("page contains %q", bad)
				}
			}
			if f.puzzles.Len() != 0 {
				t.Error("a provider page made a builtin puzzle")
			}
			// The builtin image path is not the page's with a provider.
			if _, handled := f.do(t, http.MethodGet, DefaultUnlockPath+"/captcha/x.png", "", unlockIP); handled {
				t.Error("provider page handles the builtin image path")
			}
		})
	}
}

func TestUnlockAssets(t *testing.T) {
	t.Parallel()
	f := newUnlockFixture(t, "", Provider{})
	id := puzzleIDOf(t, f.get(t).Body.String())
	base := DefaultUnlockPath + "/captcha/"

	fetch := func(t *testing.T, method, name string) *httptest.ResponseRecorder {
		t.Helper()
		w, handled := f.do(t, method, base+name, "", unlockIP)
		if !handled {
			t.Fatalf("%s %s not handled", method, name)
		}
		checkHeaders(t, w, nothingCSP)
		return w
	}

	png1 := fetch(t, http.MethodGet, id+".png")
	if png1.Code != 200 || png1.Header().Get("Content-Type") != "image/png" {
		t.Fatalf("png: status %d, type %q", png1.Code, png1.Header().Get("Content-Type"))
	}
	img, err := png.Decode(bytes.NewReader(png1.Body.Bytes()))
	if err != nil {
		t.Fatalf("png does not decode: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 240 || b.Dy() != 80 {
		t.Errorf("png is %dx%d, want 240x80 (the page's width and height)", b.Dx(), b.Dy())
	}
	if again := fetch(t, http.MethodGet, id+".png"); !bytes.Equal(again.Body.Bytes(), png1.Body.Bytes()) {
		t.Error("reloading the image shows another picture")
	}

	wav := fetch(t, http.MethodGet, id+".wav")
	body := wav.Body.Bytes()
	if wav.Code != 200 || wav.Header().Get("Content-Type") != "audio/wav" {
		t.Fatalf("wav: status %d, type %q", wav.Code, wav.Header().Get("Content-Type"))
	}
	if len(body) < 44 || string(body[:4]) != "RIFF" || string(body[8:12]) != "WAVE" {
		t.Fatalf("not a WAV file: % x", body[:min(len(body), 16)])
	}
	if cl := wav.Header().Get("Content-Length"); cl != fmt.Sprint(len(body)) {
		t.Errorf("Content-Length %s, body %d", cl, len(body))
	}

	if _, ok := f.puzzles.Peek(id); !ok {
		t.Fatal("rendering consumed the puzzle")
	}

	tests := []struct {
		name, method, file string
		want               int
	}{
		{"unknown id png", http.MethodGet, "AAAAAAAAAAAAAAAAAAAAAA.png", 404},
		{"unknown id wav", http.MethodGet, "AAAAAAAAAAAAAAAAAAAAAA.wav", 404},
		{"other extension", http.MethodGet, id + ".gif", 404},
		{"no extension", http.MethodGet, id, 404},
		{"nested", http.MethodGet, "x/" + id + ".png", 404},
		{"empty", http.MethodGet, "", 404},
		{"POST", http.MethodPost, id + ".png", 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := fetch(t, tt.method, tt.file)
			if w.Code != tt.want {
				t.Errorf("status %d, want %d", w.Code, tt.want)
			}
			if tt.want == 405 && w.Header().Get("Allow") != "GET" {
				t.Errorf("Allow = %q", w.Header().Get("Allow"))
			}
		})
	}

	// A used or expired puzzle has no picture.
	ans, _ := f.puzzles.Peek(id)
	f.puzzles.Solve(id, ans)
	if w := fetch(t, http.MethodGet, id+".png"); w.Code != 404 {
		t.Errorf("used puzzle: status %d, want 404", w.Code)
	}
	id2 := puzzleIDOf(t, f.get(t).Body.String())
	f.clock.Advance(DefaultPuzzleTTL)
	if w := fetch(t, http.MethodGet, id2+".wav"); w.Code != 404 {
		t.Errorf("expired puzzle: status %d, want 404", w.Code)
	}
}

func TestUnlockPathsNotOwned(t *testing.T) {
	t.Parallel()
	f := newUnlockFixture(t, "", Provider{})
	for _, p := range []string{"/", "/api-token-auth", "/api-token-auth/unlockx", "/api-token-auth/unlock/", "/api-token-auth/unlock/captch/x.png", "/captcha/x.png", "/rest/de.resolution.apitokenauth/latest/user/authTest"} {
		w, handled := f.do(t, http.MethodGet, p, "", unlockIP)
		if handled {
			t.Errorf("%s: handled", p)
		}
		if len(w.Header()) != 0 || w.Body.Len() != 0 {
			t.Errorf("%s: wrote a response though not handled", p)
		}
	}
}

func TestUnlockMethods(t *testing.T) {
	t.Parallel()
	f := newUnlockFixture(t, "", Provider{})
	for _, m := range []string{http.MethodHead, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions, "PROPFIND"} {
		w, handled := f.do(t, m, DefaultUnlockPath, "", unlockIP)
		if !handled || w.Code != http.StatusMethodNotAllowed {
			t.Errorf("%s: handled %v, status %d; want 405", m, handled, w.Code)
		}
		if got := w.Header().Get("Allow"); got != "GET, POST" {
			t.Errorf("%s: Allow = %q", m, got)
		}
		checkHeaders(t, w, nothingCSP)
	}
	if f.puzzles.Len() != 0 {
		t.Error("a refused method made a puzzle")
	}
}

func TestUnlockPOST(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		edit       func(f *unlockFixture, form url.Values) // change the solved form
		query      string                                  // URL query of the POST
		active     bool                                    // what the Clearer answers
		storeErr   error
		wantStatus int
		wantResult string
		wantClear  []clearCall
		wantChecks int32
	}{
		{name: "success clears the challenge", active: true,
			wantStatus: 200, wantResult: MsgCleared, wantClear: []clearCall{{"alice", unlockIP}}, wantChecks: 1},
		{name: "success without an active challenge reads the same", active: false,
			wantStatus: 200, wantResult: MsgCleared, wantClear: []clearCall{{"alice", unlockIP}}, wantChecks: 1},
		{name: "token with surrounding white space", edit: func(_ *unlockFixture, v url.Values) { v.Set("token", " "+aliceToken+"\n") },
			wantStatus: 200, wantResult: MsgCleared, wantClear: []clearCall{{"alice", unlockIP}}, wantChecks: 1},
		{name: "wrong answer", edit: func(f *unlockFixture, v url.Values) {
			ans, _ := f.puzzles.Peek(v.Get("puzzle"))
			v.Set("answer", strings.Map(func(r rune) rune { return '0' + (r-'0'+1)%10 }, ans))
		}, wantStatus: 200, wantResult: MsgCaptchaWrong},
		{name: "empty answer", edit: func(_ *unlockFixture, v url.Values) { v.Set("answer", "") },
			wantStatus: 200, wantResult: MsgCaptchaWrong},
		{name: "no puzzle id", edit: func(_ *unlockFixture, v url.Values) { v.Del("puzzle") },
			wantStatus: 200, wantResult: MsgCaptchaWrong},
		{name: "unknown puzzle id", edit: func(_ *unlockFixture, v url.Values) { v.Set("puzzle", "AAAAAAAAAAAAAAAAAAAAAA") },
			wantStatus: 200, wantResult: MsgCaptchaWrong},
		{name: "answer of another puzzle", edit: func(f *unlockFixture, v url.Values) {
			other := f.puzzles.New()
			ans, _ := f.puzzles.Peek(other)
			mine, _ := f.puzzles.Peek(v.Get("puzzle"))
			if ans == mine {
				ans = strings.Map(func(r rune) rune { return '0' + (r-'0'+1)%10 }, ans)
			}
			v.Set("answer", ans)
		}, wantStatus: 200, wantResult: MsgCaptchaWrong},
		{name: "expired puzzle", edit: func(f *unlockFixture, _ url.Values) { f.clock.Advance(DefaultPuzzleTTL) },
			wantStatus: 200, wantResult: MsgCaptchaWrong},
		{name: "wrong token", edit: func(_ *unlockFixture, v url.Values) { v.Set("token", "cat_wrong") },
			wantStatus: 200, wantResult: MsgInvalidCredentials, wantChecks: 1},
		{name: "unknown user", edit: func(_ *unlockFixture, v url.Values) { v.Set("username", "mallory") },
			wantStatus: 200, wantResult: MsgInvalidCredentials, wantChecks: 1},
		{name: "another user's token", edit: func(_ *unlockFixture, v url.Values) { v.Set("token", bobToken) },
			wantStatus: 200, wantResult: MsgInvalidCredentials, wantChecks: 1},
		{name: "empty username", edit: func(_ *unlockFixture, v url.Values) { v.Set("username", " ") },
			wantStatus: 200, wantResult: MsgInvalidCredentials},
		{name: "empty token", edit: func(_ *unlockFixture, v url.Values) { v.Del("token") },
			wantStatus: 200, wantResult: MsgInvalidCredentials},
		{name: "credentials only in the URL are ignored", edit: func(_ *unlockFixture, v url.Values) { v.Del("username"); v.Del("token") },
			query: "?username=alice&token=" + aliceToken, wantStatus: 200, wantResult: MsgInvalidCredentials},
		{name: "store unavailable", storeErr: errors.New("connection refused"),
			wantStatus: 503, wantResult: MsgStoreUnavailable, wantChecks: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newUnlockFixture(t, "", Provider{})
			f.clearer.active = tt.active
			f.tokens.err = tt.storeErr
			form, id := f.solvedForm(t, "alice", aliceToken)
			if tt.edit != nil {
				tt.edit(f, form)
			}
			w, handled := f.do(t, http.MethodPost, f.path+tt.query, form.Encode(), unlockIP)
			if !handled {
				t.Fatal("not handled")
			}
			page := w.Body.String()
			if w.Code != tt.wantStatus {
				t.Errorf("status %d, want %d", w.Code, tt.wantStatus)
			}
			checkHeaders(t, w, builtinCSP)
			text, kind := resultOf(t, page)
			if text != esc(tt.wantResult) {
				t.Errorf("result %q, want %q", text, tt.wantResult)
			}
			wantKind := "error"
			if tt.wantResult == MsgCleared {
				wantKind = "success"
			}
			if kind != wantKind {
				t.Errorf("result kind %q, want %q", kind, wantKind)
			}
			if got := f.clearer.recorded(); fmt.Sprint(got) != fmt.Sprint(tt.wantClear) {
				t.Errorf("ClearChallenge calls %v, want %v", got, tt.wantClear)
			}
			if got := f.tokens.calls.Load(); got != tt.wantChecks {
				t.Errorf("token checks %d, want %d", got, tt.wantChecks)
			}
			if _, ok := f.puzzles.Peek(id); ok && form.Get("puzzle") == id {
				t.Error("the answered puzzle is still live")
			}
			if tt.wantResult == MsgCleared {
				if strings.Contains(page, `<form`) {
					t.Error("success page shows the form again")
				}
				logged := f.logs.FilterMessage("CAPTCHA challenge cleared on the unlock page").All()
				if len(logged) != 1 {
					t.Fatalf("%d success log entries, want 1", len(logged))
				}
				e := logged[0]
				c := e.ContextMap()
				if e.Level != zapcore.DebugLevel || c["user"] != "alice" || c["client_ip"] != unlockIP.String() || c["challenge_was_active"] != tt.active {
					t.Errorf("success log: %v %v", e.Level, c)
				}
			} else {
				// A failure shows a new, live puzzle.
				next := puzzleIDOf(t, page)
				if next == id {
					t.Error("failure page shows the used puzzle again")
				}
				if _, ok := f.puzzles.Peek(next); !ok {
					t.Error("failure page shows a puzzle that is not live")
				}
				if n := len(f.logs.FilterMessage("CAPTCHA challenge cleared on the unlock page").All()); n != 0 {
					t.Error("a failure logged a success")
				}
			}
			assertNoLeak(t, f.logs, page, aliceToken, bobToken, form.Get("answer"))
		})
	}
}

func TestUnlockSingleUse(t *testing.T) {
	t.Parallel()
	f := newUnlockFixture(t, "", Provider{})
	form, _ := f.solvedForm(t, "alice", aliceToken)
	want := []string{MsgCleared, MsgCaptchaWrong, MsgCaptchaWrong}
	for i, msg := range want {
		w := f.post(t, form, unlockIP)
		if text, _ := resultOf(t, w.Body.String()); text != esc(msg) {
			t.Errorf("POST %d: %q, want %q", i+1, text, msg)
		}
	}
	if n := len(f.clearer.recorded()); n != 1 {
		t.Errorf("%d clears, want 1", n)
	}
	if n := f.tokens.calls.Load(); n != 1 {
		t.Errorf("%d token checks, want 1", n)
	}
}

// The page must not tell an unknown user from a wrong token: same status,
// same headers (but the nonce), same page (but the nonce and the puzzle).
func TestUnlockSameAnswerUnknownUserWrongToken(t *testing.T) {
	t.Parallel()
	f := newUnlockFixture(t, "", Provider{})
	answer := func(user, token string) (*httptest.ResponseRecorder, string) {
		form, _ := f.solvedForm(t, user, token)
		w := f.post(t, form, unlockIP)
		page := w.Body.String()
		page = strings.ReplaceAll(page, puzzleIDOf(t, page), "PUZZLE")
		page = strings.ReplaceAll(page, nonceRe.FindStringSubmatch(page)[1], "NONCE")
		return w, page
	}
	variants := []struct{ user, token string }{
		{"mallory", aliceToken},  // unknown user, somebody's token
		{"mallory", "cat_guess"}, // unknown user
		{"alice", "cat_guess"},   // known user, wrong token
		{"alice", bobToken},      // known user, another user's token
		{"Alice", aliceToken},    // case matters, and says nothing either
		{"", "cat_guess"},        // no user
	}
	w0, page0 := answer(variants[0].user, variants[0].token)
	for _, v := range variants[1:] {
		w, page := answer(v.user, v.token)
		if w.Code != w0.Code {
			t.Errorf("%+v: status %d vs %d", v, w.Code, w0.Code)
		}
		if page != page0 {
			t.Errorf("%+v: page differs:\n%s\nvs\n%s", v, page, page0)
		}
		for name := range w0.Header() {
			if name == "Content-Security-Policy" {
				continue
			}
			if w.Header().Get(name) != w0.Header().Get(name) {
				t.Errorf("%+v: header %s %q vs %q", v, name, w.Header().Get(name), w0.Header().Get(name))
			}
		}
	}
	if text, _ := resultOf(t, page0); text != esc(MsgInvalidCredentials) {
		t.Errorf("result %q", text)
	}
	if n := len(f.clearer.recorded()); n != 0 {
		t.Errorf("%d clears, want 0", n)
	}
}

func TestUnlockRateLimit(t *testing.T) {
	t.Parallel()
	f := newUnlockFixture(t, "", Provider{})
	junk := url.Values{"username": {"alice"}, "token": {"x"}, "puzzle": {"x"}, "answer": {"1"}}
	for i := range UnlockPostLimit {
		if w := f.post(t, junk, unlockIP); w.Code != 200 {
			t.Fatalf("POST %d: status %d", i+1, w.Code)
		}
		f.clock.Advance(time.Second)
	}
	// Over the limit even a right answer with a valid token is refused,
	// and the puzzle is not spent.
	form, id := f.solvedForm(t, "alice", aliceToken)
	f.clock.Advance(20 * time.Second) // 30 s into the window
	w := f.post(t, form, unlockIP)
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("POST %d: status %d, want 429", UnlockPostLimit+1, w.Code)
	}
	if got := w.Header().Get("Retry-After"); got != "570" {
		t.Errorf("Retry-After = %q, want 570", got)
	}
	checkHeaders(t, w, builtinCSP)
	page := w.Body.String()
	if text, _ := resultOf(t, page); text != esc(MsgTooManyAttempts) {
		t.Errorf("result %q", text)
	}
	if !strings.Contains(page, `<p id="wait">You can try again in about 10 minutes.</p>`) || !strings.Contains(page, `<a id="again" href="`+DefaultUnlockPath+`">`) {
		t.Errorf("429 page lacks the wait or the link back:\n%s", page)
	}
	if strings.Contains(page, "<form") {
		t.Error("429 page shows the form")
	}
	if len(f.clearer.recorded()) != 0 || f.tokens.calls.Load() != 0 {
		t.Error("a rate-limited POST was processed")
	}
	if _, ok := f.puzzles.Peek(id); !ok {
		t.Error("a rate-limited POST spent the puzzle")
	}

	// GET is not limited; other addresses are not; the same IPv6 /64 is.
	f.get(t)
	if w := f.post(t, junk, unlockOtherIP); w.Code != 200 {
		t.Errorf("other IP: status %d", w.Code)
	}
	v6a, v6b := netip.MustParseAddr("2001:db8:1:2::1"), netip.MustParseAddr("2001:db8:1:2:ffff::9")
	for range UnlockPostLimit {
		f.post(t, junk, v6a)
	}
	if w := f.post(t, junk, v6b); w.Code != http.StatusTooManyRequests {
		t.Errorf("same /64: status %d, want 429", w.Code)
	}
	if w := f.post(t, junk, netip.MustParseAddr("2001:db8:1:3::1")); w.Code != 200 {
		t.Errorf("other /64: status %d, want 200", w.Code)
	}
	// An IPv4-mapped address counts as its IPv4 address.
	if w := f.post(t, junk, netip.AddrFrom16(unlockIP.As16())); w.Code != http.StatusTooManyRequests {
		t.Errorf("IPv4-mapped: status %d, want 429", w.Code)
	}

	// When the window has passed, the answer goes through.
	f.clock.Advance(UnlockPostWindow - 30*time.Second)
	w = f.post(t, form, unlockIP)
	if text, _ := resultOf(t, w.Body.String()); w.Code != 200 || text != esc(MsgCleared) {
		t.Errorf("after the window: status %d, %q", w.Code, text)
	}
	if len(f.logs.FilterMessage("unlock page: too many attempts").All()) == 0 {
		t.Error("rate limit not logged")
	}
}

func TestAddrLimiterBounded(t *testing.T) {
	t.Parallel()
	l := newAddrLimiter(1, time.Minute, 3)
	now := time.Unix(1000, 0)
	ips := []netip.Addr{
		netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"),
		netip.MustParseAddr("192.0.2.3"), netip.MustParseAddr("192.0.2.4"),
	}
	for _, ip := range ips {
		if ok, _ := l.allow(ip, now); !ok {
			t.Fatalf("%s refused on first use", ip)
		}
		now = now.Add(time.Second)
	}
	if n := len(l.byKey); n != 3 || l.starts.Len() != 3 {
		t.Fatalf("%d/%d windows kept, want 3", n, l.starts.Len())
	}
	// The oldest (ips[0]) was forgotten; the newest are still counted.
	if ok, _ := l.allow(ips[3], now); ok {
		t.Error("newest address not counted")
	}
	if ok, _ := l.allow(ips[0], now); !ok {
		t.Error("evicted address still counted")
	}
	if ok, wait := l.allow(ips[0], now.Add(10*time.Second)); ok || wait != 50*time.Second {
		t.Errorf("allow = %v, %s; want false, 50s", ok, wait)
	}
}

func TestUnlockFormTooLarge(t *testing.T) {
	t.Parallel()
	f := newUnlockFixture(t, "", Provider{})
	form, _ := f.solvedForm(t, "alice", aliceToken)
	form.Set("padding", strings.Repeat("x", maxUnlockForm))
	w := f.post(t, form, unlockIP)
	if w.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("status %d, want 413", w.Code)
	}
	checkHeaders(t, w, nothingCSP)
	if len(f.clearer.recorded()) != 0 || f.tokens.calls.Load() != 0 {
		t.Error("an oversized form was processed")
	}
}

func TestUnlockProviders(t *testing.T) {
	t.Parallel()
	const (
		secret   = "prov-secret-0x0000000000000000000000000000000AA"
		response = "widget-response-0.AbCdEf"
	)
	outcomes := []struct {
		name       string
		answer     func(http.ResponseWriter, *http.Request)
		field      string // "" = the provider's own field
		wantResult string
		wantCalls  int
		wantClear  bool
		wantErrLog bool
	}{
		{name: "success", answer: jsonAnswer(200, `{"success": true, "error-codes": []}`), wantResult: MsgCleared, wantCalls: 1, wantClear: true},
		{name: "failure", answer: jsonAnswer(200, `{"success": false, "error-codes": ["invalid-input-response"]}`), wantResult: MsgCaptchaWrong, wantCalls: 1},
		{name: "timeout", answer: slowAnswer, wantResult: MsgCaptchaUnverified, wantCalls: 1, wantErrLog: true},
		{name: "status 500", answer: jsonAnswer(500, `oops`), wantResult: MsgCaptchaUnverified, wantCalls: 1, wantErrLog: true},
		{name: "bad JSON", answer: jsonAnswer(200, `{"success": tru`), wantResult: MsgCaptchaUnverified, wantCalls: 1, wantErrLog: true},
		{name: "response in another field", answer: jsonAnswer(200, `{"success": true}`), field: "some-other-response", wantResult: MsgCaptchaWrong},
	}
	for _, provider := range []string{ProviderTurnstile, ProviderHCaptcha, ProviderReCaptcha} {
		for _, tt := range outcomes {
			t.Run(provider+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				srv := newSiteverifyServer(t, tt.answer)
				f := newUnlockFixture(t, "", Provider{Name: provider, SiteKey: "site-key", Secret: secret, VerifyURL: srv.URL + "/siteverify"})
				f.page.VerifyTimeout = 150 * time.Millisecond
				field := tt.field
				if field == "" {
					field = widgets[provider].field
				}
				form := url.Values{"username": {"alice"}, "token": {aliceToken}, field: {response}}
				w := f.post(t, form, unlockIP)
				page := w.Body.String()
				if w.Code != 200 {
					t.Errorf("status %d, want 200", w.Code)
				}
				if text, _ := resultOf(t, page); text != esc(tt.wantResult) {
					t.Errorf("result %q, want %q", text, tt.wantResult)
				}
				calls := srv.calls()
				if len(calls) != tt.wantCalls {
					t.Fatalf("siteverify called %d times, want %d", len(calls), tt.wantCalls)
				}
				if len(calls) == 1 {
					c := calls[0]
					if c.Get("secret") != secret || c.Get("response") != response || c.Get("remoteip") != unlockIP.String() {
						t.Errorf("siteverify got %v", c)
					}
				}
				cleared := len(f.clearer.recorded()) == 1
				if cleared != tt.wantClear {
					t.Errorf("cleared %v, want %v", cleared, tt.wantClear)
				}
				if !tt.wantClear && f.tokens.calls.Load() != 0 {
					t.Error("token checked without a verified CAPTCHA")
				}
				errs := f.logs.FilterLevelExact(zapcore.ErrorLevel).All()
				if tt.wantErrLog {
					if len(errs) != 1 {
						t.Fatalf("want one error log, got %v", errs)
					}
					c := errs[0].ContextMap()
					if msg, _ := c["error"].(string); c["provider"] != provider || !strings.Contains(msg, "siteverify") {
						t.Errorf("want one error log naming the provider and the error, got %v", errs)
					}
				} else if len(errs) != 0 {
					t.Errorf("unexpected error logs: %v", errs)
				}
				checkHeaders(t, w, func(n string) string { return f.page.csp(n) })
				assertNoLeak(t, f.logs, page, secret, response, aliceToken)
			})
		}
	}
}
