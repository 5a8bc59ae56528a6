package caddyauth

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/caddy-apitoken/caddy-apitoken/captcha"
)

// The unlock page in a real browser (SPEC §7): Debian's headless Chromium,
// driven with chromedp, against the in-process Caddy.

// browserArtifacts is where the screenshots of the browser test go: the
// git-ignored /testdata-artifacts/ of the repository (go test runs in the
// package's folder).
var browserArtifacts = filepath.Join("..", "testdata-artifacts")

// browserRealm names the test's realm: its lockout state outlives config
// loads, so no other test may share it.
const browserRealm = "browser"

func browserCaddyfile(storePath string) string {
	// Caddy's storage beside the token store, so that the lockout state
	// persisted there stays in this test run.
	return `
{
	admin localhost:2999
	http_port 9080
	storage file_system ` + filepath.Join(filepath.Dir(storePath), "caddy-storage") + `
}
http://localhost:9080 {
	api_token_auth {
		realm ` + browserRealm + `
		store file ` + storePath + `
	}
	respond "hello {http.auth.user.id}"
}
`
}

// chromiumPath finds the browser: $CHROMIUM, else Debian's
// /usr/bin/chromium, else chromium on PATH. Without one the test fails:
// a skipped browser test would pass for one that never ran.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		path, err := exec.LookPath(p)
		if err != nil {
			t.Fatalf("CHROMIUM=%s: %v", p, err)
		}
		return path
	}
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	if path, err := exec.LookPath("chromium"); err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("chromium not found in CI: scripts/test.sh (run by .ci/run) installs Debian's chromium package; did that step run?")
	}
	t.Fatalf("chromium not found: install Debian's chromium package (scripts/test.sh does), or set CHROMIUM to a Chromium or Chrome binary")
	return ""
}

// newBrowser starts a headless Chromium with a fresh profile and returns a
// tab's context, bounded by timeout. The browser is closed when the test
// ends.
func newBrowser(t *testing.T, chromium string, timeout time.Duration) context.Context {
	t.Helper()
	profile := t.TempDir()
	ctx, cancelTimeout := context.WithTimeout(context.Background(), timeout)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.Headless,
		// Root in a sandbox, where Chromium's own sandbox cannot start.
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1024, 768),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		// Loopback only, and from the address the Go client uses
		// (caddytest dials 127.0.0.1): the lockout key is user + client IP.
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("host-resolver-rules", "MAP localhost 127.0.0.1, MAP * ~NOTFOUND"),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	tab, cancelTab := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	// Cleanups run last in, first out: this one runs before the profile's
	// folder is removed, and waits for the browser to exit.
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		cancelTimeout()
	})
	return tab
}

// saveScreenshot writes a PNG of the whole page to browserArtifacts.
func saveScreenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.MkdirAll(browserArtifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(browserArtifacts, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	t.Logf("screenshot: %s", path)
}

// responseHeader returns the header name of a response seen by Chromium, whatever its case.
func responseHeader(h network.Headers, name string) string {
	for k, v := range h {
		if strings.EqualFold(k, name) {
			s, _ := v.(string)
			return s
		}
	}
	return ""
}

// TestUnlockPageInBrowser puts alice under a CAPTCHA challenge, then has
// Chromium open the unlock page, check that the CAPTCHA image really
// rendered, fill in the form (the answer comes from the realm's puzzle
// store) and submit it; alice's token then works again.
func TestUnlockPageInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	f := newFixture(t, time.Now())
	tester := startCaddy(t, browserCaddyfile(f.path))
	good := basicAuth("alice", f.secrets[tokRW])
	const captchaAnswer = `{"isSuccessfulAuthentication":false,"authenticationFailureDetails":"For security reasons you must answer a CAPTCHA question."}`
	const success = `{"isSuccessfulAuthentication":true}`

	// The challenge: max_failures bad Basic attempts from this address.
	for i := 1; i <= captcha.DefaultMaxFailures; i++ {
		if resp, body := call(t, tester, "GET", "/", basicAuth("alice", "cat_wrong"), nil); resp.StatusCode != 401 {
			t.Fatalf("bad attempt %d: got %d %s, want 401", i, resp.StatusCode, body)
		}
	}
	if resp, body := call(t, tester, "GET", DefaultTestEndpoint, good, nil); resp.StatusCode != 200 || body != captchaAnswer {
		t.Fatalf("test endpoint under the challenge: got %d %s\nwant 200 %s", resp.StatusCode, body, captchaAnswer)
	}

	start := time.Now()
	ctx := newBrowser(t, chromium, 60*time.Second)
	unlockURL := e2eBase + captcha.DefaultUnlockPath

	// The page, its headers and the address it came from.
	resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(unlockURL))
	if err != nil {
		t.Fatalf("opening %s in Chromium: %v", unlockURL, err)
	}
	t.Logf("Chromium started and loaded the page in %v", time.Since(start).Round(time.Millisecond))
	if resp.Status != 200 {
		t.Fatalf("GET %s: status %d", unlockURL, resp.Status)
	}
	if resp.RemoteIPAddress != "127.0.0.1" {
		t.Fatalf("Chromium reached Caddy at %q, want 127.0.0.1 (the challenged address)", resp.RemoteIPAddress)
	}
	if csp := responseHeader(resp.Headers, "Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Fatalf("unlock page Content-Security-Policy %q lacks default-src 'none'", csp)
	}

	// The CAPTCHA image really rendered: loaded, decoded, with a size.
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.ID("captcha-image"))); err != nil {
		t.Fatalf("waiting for #captcha-image: %v", err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.getElementById('captcha-image').complete`,
		chromedp.WithPollingTimeout(10*time.Second))); err != nil {
		t.Fatalf("#captcha-image never completed loading: %v", err)
	}
	type imageState struct {
		Complete      bool `json:"complete"`
		NaturalWidth  int  `json:"naturalWidth"`
		NaturalHeight int  `json:"naturalHeight"`
	}
	img, err := chromedp.Run(ctx, chromedp.Evaluate[imageState](
		`(() => { const i = document.getElementById('captcha-image'); return {complete: i.complete, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}; })()`))
	if err != nil {
		t.Fatalf("reading #captcha-image: %v", err)
	}
	if !img.Complete || img.NaturalWidth <= 0 || img.NaturalHeight <= 0 {
		t.Fatalf("the CAPTCHA image did not render: %+v (blocked by the CSP, or not served?)", img)
	}
	// The page's one style block carries the CSP nonce; a policy that
	// blocked it would leave the page unstyled.
	styled, err := chromedp.Run(ctx, chromedp.Evaluate[bool](
		`(() => { const s = document.querySelector('style'); return !!(s && s.sheet && s.sheet.cssRules.length > 0); })()`))
	if err != nil {
		t.Fatalf("reading the page's style: %v", err)
	}
	if !styled {
		t.Fatal("the page's style block was not applied (blocked by the CSP?)")
	}

	// The answer, as the person would read it off the image.
	puzzle, err := chromedp.Run(ctx, chromedp.Value(chromedp.ID("puzzle")))
	if err != nil {
		t.Fatalf("reading #puzzle: %v", err)
	}
	realm, ok := captcha.Lookup(browserRealm)
	if !ok {
		t.Fatalf("realm %q is not live", browserRealm)
	}
	answer, ok := realm.Puzzles.Peek(puzzle)
	if !ok {
		t.Fatalf("puzzle %q (from the page) is not in the realm's store", puzzle)
	}

	if err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.ID("username"), "alice"),
		chromedp.SendKeys(chromedp.ID("token"), f.secrets[tokRW]),
		chromedp.SendKeys(chromedp.ID("answer"), answer),
	); err != nil {
		t.Fatalf("filling in the form: %v", err)
	}
	saveScreenshot(t, ctx, "unlock-page.png")

	// Submit as a person does, and wait for the answer page.
	resp, err = chromedp.RunResponse(ctx, chromedp.Click(chromedp.ID("submit")))
	if err != nil {
		t.Fatalf("submitting the form: %v", err)
	}
	if resp.Status != 200 {
		t.Fatalf("POST %s: status %d", unlockURL, resp.Status)
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.ID("result"))); err != nil {
		t.Fatalf("waiting for #result: %v", err)
	}
	text, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("result")))
	if err != nil {
		t.Fatalf("reading #result: %v", err)
	}
	class, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.ID("result"), "class"))
	if err != nil {
		t.Fatalf("reading #result's class: %v", err)
	}
	saveScreenshot(t, ctx, "unlock-success.png")
	if !strings.Contains(text, captcha.MsgCleared) || !strings.Contains(" "+class.Value+" ", " success ") {
		t.Fatalf("after submitting: #result (class %q) says %q\nwant class success and %q", class.Value, text, captcha.MsgCleared)
	}
	t.Logf("browser part took %v", time.Since(start).Round(time.Millisecond))

	// alice's token works again.
	if resp, body := call(t, tester, "GET", DefaultTestEndpoint, good, nil); resp.StatusCode != 200 || body != success {
		t.Fatalf("test endpoint after unlocking: got %d %s\nwant 200 %s", resp.StatusCode, body, success)
	}
}
