//go:build unix

package binarytest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// testEndpoint is the default test_endpoint path (SPEC §4).
const testEndpoint = "/rest/de.resolution.apitokenauth/latest/user/authTest"

// Bounds on every wait, so that a hung child fails the test instead of
// hanging it.
const (
	buildTimeout   = 12 * time.Minute // scripts/build-caddy.sh; 4–5 minutes on a cold module cache
	commandTimeout = time.Minute      // one `caddy api-token …` or `caddy validate`
	startTimeout   = 30 * time.Second // `caddy run` until its port accepts connections
	stopTimeout    = 10 * time.Second // `caddy run` after an interrupt, before it is killed
	curlMaxTime    = 10               // seconds; curl --max-time
)

// secretPattern is a generated token with the default prefix (SPEC §3).
var secretPattern = regexp.MustCompile(`^cat_[0-9A-Za-z]{38}$`)

// TestRealBinary drives a real Caddy binary with the plugin: it makes
// tokens with the CLI, validates and runs a Caddyfile, and checks the
// answers to requests sent with curl.
func TestRealBinary(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatalf("curl is required for this test (scripts/test.sh installs it): %v", err)
	}
	dir := t.TempDir()
	h := &harness{t: t, caddy: caddyBinary(t), curl: curl, env: childEnv(t, dir)}

	// Tokens, made the way an administrator makes them.
	store := filepath.Join(dir, "tokens.json")
	secret := h.createToken(store, "--user", "alice", "--name", "ci")
	readOnly := h.createToken(store, "--user", "alice", "--name", "ro", "--scope", "read-only")
	// Well formed (right prefix and checksum), but unknown to the server's store.
	stranger := h.createToken(filepath.Join(dir, "other-tokens.json"), "--user", "alice", "--name", "elsewhere")

	t.Run("hash matches the store", func(t *testing.T) {
		stored := readStoredHashes(t, store)
		for name, s := range map[string]string{"ci": secret, "ro": readOnly} {
			want := "sha256:" + hexSHA256(s)
			if stored[name] != want {
				t.Errorf("token %q: store keeps %q, want sha256 of the secret %q", name, stored[name], want)
			}
			if got := h.hash(s); got != stored[name] {
				t.Errorf("token %q: `caddy api-token hash` printed %q, store keeps %q", name, got, stored[name])
			}
		}
		data, err := os.ReadFile(store)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte(secret)) || bytes.Contains(data, []byte(readOnly)) {
			t.Errorf("store file %s contains a secret", store)
		}
	})

	adminAddr, siteAddr := freeAddr(t), freeAddr(t)
	dataDir := filepath.Join(dir, "data")
	caddyfile := writeFile(t, dir, "Caddyfile", caddyfileText(adminAddr, siteAddr, dataDir, store, ""))
	badCaddyfile := writeFile(t, dir, "Caddyfile.bad", caddyfileText(adminAddr, siteAddr, dataDir, store, "anonymous maybe"))

	t.Run("validate", func(t *testing.T) {
		if _, stderr, err := h.run(nil, "validate", "--config", caddyfile, "--adapter", "caddyfile"); err != nil {
			t.Fatalf("caddy validate of a good Caddyfile: %v\n%s", err, stderr)
		}
		stdout, stderr, err := h.run(nil, "validate", "--config", badCaddyfile, "--adapter", "caddyfile")
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			t.Fatalf("caddy validate with `anonymous maybe`: want a non-zero exit, got %v\n%s%s", err, stdout, stderr)
		}
		out := stdout + stderr
		if !strings.Contains(out, "anonymous") || !strings.Contains(out, "maybe") {
			t.Errorf("caddy validate with `anonymous maybe` failed without naming the directive and value:\n%s", out)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	stop := h.startCaddy(dir, caddyfile, siteAddr)
	base := "http://" + siteAddr

	jsonType := map[string]string{"Content-Type": "application/json"}
	testEndpointHeaders := map[string]string{"Content-Type": "application/json", "Cache-Control": "no-store"}
	challenges := []string{`Basic realm="default"`, `Bearer realm="default"`}

	// In order: the successes first, so that no failure counting (SPEC §7)
	// can stand in their way.
	tests := []struct {
		name           string
		args           []string
		wantStatus     int
		wantBody       string
		wantHeaders    map[string]string // exact single values
		wantChallenges []string          // every WWW-Authenticate value, in any order
	}{
		{
			name:       "basic auth reaches the next handler",
			args:       []string{"-u", "alice:" + secret, base + "/"},
			wantStatus: http.StatusOK,
			wantBody:   "hello alice",
		},
		{
			name:       "read-only token may GET",
			args:       []string{"-u", "alice:" + readOnly, base + "/"},
			wantStatus: http.StatusOK,
			wantBody:   "hello alice",
		},
		{
			name:        "bearer on the test endpoint succeeds",
			args:        []string{"-H", "Authorization: Bearer " + secret, base + testEndpoint},
			wantStatus:  http.StatusOK,
			wantBody:    `{"isSuccessfulAuthentication":true}`,
			wantHeaders: testEndpointHeaders,
		},
		{
			name:           "no credentials",
			args:           []string{base + "/"},
			wantStatus:     http.StatusUnauthorized,
			wantBody:       `{"message":"No valid bearer- or basic auth header present"}`,
			wantHeaders:    jsonType,
			wantChallenges: challenges,
		},
		{
			name:        "unknown token on the test endpoint",
			args:        []string{"-H", "Authorization: Bearer " + stranger, base + testEndpoint},
			wantStatus:  http.StatusOK,
			wantBody:    `{"isSuccessfulAuthentication":false,"authenticationFailureDetails":"Token is invalid, has been revoked or expired"}`,
			wantHeaders: testEndpointHeaders,
		},
		{
			name:        "malformed token on the test endpoint",
			args:        []string{"-H", "Authorization: Bearer cat_notARealToken", base + testEndpoint},
			wantStatus:  http.StatusOK,
			wantBody:    `{"isSuccessfulAuthentication":false,"authenticationFailureDetails":"Token is invalid, has been revoked or expired"}`,
			wantHeaders: testEndpointHeaders,
		},
		{
			name:           "wrong token on a protected route",
			args:           []string{"-u", "alice:" + stranger, base + "/"},
			wantStatus:     http.StatusUnauthorized,
			wantBody:       `{"message":"Token is invalid, has been revoked or expired"}`,
			wantHeaders:    jsonType,
			wantChallenges: challenges,
		},
		{
			name:        "read-only token may not POST",
			args:        []string{"-X", "POST", "-H", "Authorization: Bearer " + readOnly, base + "/"},
			wantStatus:  http.StatusForbidden,
			wantBody:    `{"message":"The token scope is read-only and only covers GET, HEAD and OPTIONS requests. Request method type was POST."}`,
			wantHeaders: jsonType,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := h.curlRequest(t, tc.args...)
			if resp.status != tc.wantStatus {
				t.Errorf("status %d, want %d", resp.status, tc.wantStatus)
			}
			if resp.body != tc.wantBody {
				t.Errorf("body %q, want %q", resp.body, tc.wantBody)
			}
			for name, want := range tc.wantHeaders {
				if got := resp.header.Values(name); len(got) != 1 || got[0] != want {
					t.Errorf("header %s: %q, want %q", name, got, want)
				}
			}
			if got := slices.Sorted(slices.Values(resp.header.Values("WWW-Authenticate"))); !slices.Equal(got, tc.wantChallenges) {
				t.Errorf("WWW-Authenticate %q, want %q", got, tc.wantChallenges)
			}
			if t.Failed() {
				t.Logf("curl %s answered:\n%s", strings.Join(tc.args, " "), resp.raw)
			}
		})
	}

	// SPEC §7: a CAPTCHA challenge is kept in Caddy's storage, so a
	// restart does not lift it.
	t.Run("a challenge outlives a restart", func(t *testing.T) {
		const challenged = `{"message":"For security reasons you must answer a CAPTCHA question."}`
		for i := 0; i < 5; i++ {
			if resp := h.curlRequest(t, "-u", "alice:"+stranger, base+"/"); resp.status != http.StatusUnauthorized && resp.status != http.StatusForbidden {
				t.Fatalf("bad attempt %d: %d %s", i+1, resp.status, resp.body)
			}
		}
		if resp := h.curlRequest(t, "-u", "alice:"+secret, base+"/"); resp.status != http.StatusForbidden || resp.body != challenged {
			t.Fatalf("right token after 5 bad attempts: %d %s", resp.status, resp.body)
		}
		stop()
		h.startCaddy(dir, caddyfile, siteAddr)
		if resp := h.curlRequest(t, "-u", "alice:"+secret, base+"/"); resp.status != http.StatusForbidden || resp.body != challenged {
			t.Errorf("right token after a restart: %d %s, want the challenge kept", resp.status, resp.body)
		}
		// Bearer names no user: no challenge holds it.
		if resp := h.curlRequest(t, "-H", "Authorization: Bearer "+secret, base+"/"); resp.status != http.StatusOK {
			t.Errorf("Bearer after the restart: %d %s", resp.status, resp.body)
		}
	})
}

// TestRealBinaryAdminAPI drives a running Caddy with the plugin through
// `caddy api-token` and its admin API (SPEC §8, §9), and checks a reload
// that Caddy must refuse (SPEC §10).
func TestRealBinaryAdminAPI(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatalf("curl is required for this test (scripts/test.sh installs it): %v", err)
	}
	dir := t.TempDir()
	h := &harness{t: t, caddy: caddyBinary(t), curl: curl, env: childEnv(t, dir)}

	t.Run("list-modules", func(t *testing.T) {
		stdout, stderr, err := h.run(nil, "list-modules")
		if err != nil {
			t.Fatalf("caddy list-modules: %v\n%s", err, stderr)
		}
		modules := strings.Fields(stdout)
		for _, id := range []string{"admin.api.api_token_auth", "http.handlers.api_token_auth"} {
			if !slices.Contains(modules, id) {
				t.Errorf("caddy list-modules does not list %s:\n%s", id, stdout)
			}
		}
	})

	adminAddr, siteAddr := freeAddr(t), freeAddr(t)
	dataDir := filepath.Join(dir, "data")
	store := filepath.Join(dir, "tokens.json") // made by the first token
	caddyfile := writeFile(t, dir, "Caddyfile", caddyfileText(adminAddr, siteAddr, dataDir, store, ""))
	h.startCaddy(dir, caddyfile, siteAddr)
	base := "http://" + siteAddr + "/"
	admin := []string{"--address", adminAddr}
	get := func(t *testing.T, user, secret string) response {
		t.Helper()
		return h.curlRequest(t, "-u", user+":"+secret, base)
	}

	// Create, then use the token at once.
	stdout, stderr := h.apiToken(t, append([]string{"create", "--user", "bob", "--name", "laptop"}, admin...)...)
	first := strings.TrimSuffix(stdout, "\n")
	if !secretPattern.MatchString(first) {
		t.Fatalf("create printed %q on stdout, want only a token\nstderr:\n%s", stdout, stderr)
	}
	if !strings.Contains(stderr, "realm default at "+adminAddr) {
		t.Errorf("create: stderr does not say where the token was made:\n%s", stderr)
	}
	if resp := get(t, "bob", first); resp.status != http.StatusOK || resp.body != "hello bob" {
		t.Fatalf("the new token: %d %s", resp.status, resp.body)
	}
	ids := h.activeTokenIDs(t, adminAddr, "bob")
	if len(ids) != 1 {
		t.Fatalf("bob's active tokens: %q, want the one just made", ids)
	}
	firstID := ids[0]

	t.Run("list finds the admin address in the config", func(t *testing.T) {
		// No --address: like `caddy stop`, the command reads it from --config.
		stdout, stderr := h.apiToken(t, "list", "--config", caddyfile)
		want := regexp.MustCompile(`(?m)^ID +USER +NAME +SCOPE +STATUS +EXPIRES +LAST USED\n` + firstID + ` +bob +laptop +read-write +active +never +\S+\n\z`)
		if !want.MatchString(stdout) {
			t.Errorf("list printed:\n%s\nstderr:\n%s", stdout, stderr)
		}
	})

	var second string
	t.Run("rotate with a grace period", func(t *testing.T) {
		stdout, stderr := h.apiToken(t, append([]string{"rotate", firstID, "--grace", "1h"}, admin...)...)
		second = strings.TrimSuffix(stdout, "\n")
		if !secretPattern.MatchString(second) || second == first {
			t.Fatalf("rotate printed %q on stdout, want only a new token\nstderr:\n%s", stdout, stderr)
		}
		if !strings.Contains(stderr, "The old token "+firstID+" keeps working until ") {
			t.Errorf("rotate: stderr does not say when the old token stops:\n%s", stderr)
		}
		for name, s := range map[string]string{"old": first, "new": second} {
			if resp := get(t, "bob", s); resp.status != http.StatusOK {
				t.Errorf("%s token during the grace period: %d %s", name, resp.status, resp.body)
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("revoke applies at once", func(t *testing.T) {
		var secondID string
		for _, id := range h.activeTokenIDs(t, adminAddr, "bob") {
			if id != firstID {
				secondID = id
			}
		}
		if secondID == "" {
			t.Fatal("the rotated token is not listed")
		}
		_, stderr := h.apiToken(t, append([]string{"revoke", secondID}, admin...)...)
		if !strings.Contains(stderr, "Revoked token "+secondID) {
			t.Errorf("revoke: stderr %q", stderr)
		}
		if resp := get(t, "bob", second); resp.status != http.StatusUnauthorized {
			t.Errorf("revoked token: %d %s, want 401 at once", resp.status, resp.body)
		}
		if resp := get(t, "bob", first); resp.status != http.StatusOK {
			t.Errorf("the old token, still in its grace period: %d %s", resp.status, resp.body)
		}
	})

	t.Run("unlock clears a CAPTCHA challenge", func(t *testing.T) {
		wrong := h.createToken(filepath.Join(dir, "other-tokens.json"), "--user", "bob")
		for i := range 5 {
			if resp := get(t, "bob", wrong); resp.status != http.StatusUnauthorized && resp.status != http.StatusForbidden {
				t.Fatalf("bad attempt %d: %d %s", i+1, resp.status, resp.body)
			}
		}
		const challenged = `{"message":"For security reasons you must answer a CAPTCHA question."}`
		if resp := get(t, "bob", first); resp.status != http.StatusForbidden || resp.body != challenged {
			t.Fatalf("right token after 5 bad attempts: %d %s", resp.status, resp.body)
		}
		_, stderr := h.apiToken(t, append([]string{"unlock", "--user", "bob"}, admin...)...)
		if !strings.Contains(stderr, "1 CAPTCHA challenge(s) of user bob") {
			t.Errorf("unlock: stderr %q", stderr)
		}
		if resp := get(t, "bob", first); resp.status != http.StatusOK {
			t.Errorf("after unlock: %d %s", resp.status, resp.body)
		}
	})

	t.Run("errors exit 1 with the API's message", func(t *testing.T) {
		out := h.mustFail(t, append([]string{"api-token", "revoke", "nope"}, admin...)...)
		if !strings.Contains(out, "caddy api-token revoke: unknown token nope (404)") {
			t.Errorf("revoke of an unknown token printed:\n%s", out)
		}
		out = h.mustFail(t, "api-token", "unlock", "--user", "bob", "--store", "file:"+store)
		if !strings.Contains(out, "lockouts live in the running server") {
			t.Errorf("unlock --store printed:\n%s", out)
		}
	})

	// SPEC §10: a config whose store file is corrupt is refused, and the
	// running config keeps serving.
	corrupt := writeFile(t, dir, "corrupt-tokens.json", `{"version": 1, "tokens": [`)
	t.Run("reload to a corrupt store is refused", func(t *testing.T) {
		bad := writeFile(t, dir, "Caddyfile.corrupt", caddyfileText(adminAddr, siteAddr, dataDir, corrupt, ""))
		out := h.mustFail(t, "reload", "--config", bad, "--adapter", "caddyfile", "--address", adminAddr)
		if !strings.Contains(out, corrupt) {
			t.Errorf("caddy reload failed without naming %s:\n%s", corrupt, out)
		}
		if resp := get(t, "bob", first); resp.status != http.StatusOK || resp.body != "hello bob" {
			t.Errorf("after the refused reload: %d %s, want the old config serving", resp.status, resp.body)
		}
	})

	// A refused config may have provisioned a realm before another module
	// failed; the admin API must keep managing the running config's realm.
	t.Run("a refused reload leaves the admin API on the running config", func(t *testing.T) {
		other := filepath.Join(dir, "refused-tokens.json")
		text := caddyfileText(adminAddr, siteAddr, dataDir, other, "")
		text = strings.Replace(text, "\trespond ", fmt.Sprintf("\troute /other/* {\n\t\tapi_token_auth {\n\t\t\trealm other\n\t\t\tstore file %q\n\t\t}\n\t}\n\trespond ", corrupt), 1)
		bad := writeFile(t, dir, "Caddyfile.half", text)
		if out := h.mustFail(t, "reload", "--config", bad, "--adapter", "caddyfile", "--address", adminAddr); !strings.Contains(out, corrupt) {
			t.Errorf("caddy reload failed without naming %s:\n%s", corrupt, out)
		}
		if ids := h.activeTokenIDs(t, adminAddr, "bob"); !slices.Contains(ids, firstID) {
			t.Errorf("after the refused reload the admin API lists bob's active tokens %q, want %s of the running config", ids, firstID)
		}
		stdout, stderr := h.apiToken(t, append([]string{"create", "--user", "carol"}, admin...)...)
		secret := strings.TrimSuffix(stdout, "\n")
		if resp := get(t, "carol", secret); resp.status != http.StatusOK {
			t.Errorf("a token made after the refused reload: %d %s, want 200 on the running config\n%s", resp.status, resp.body, stderr)
		}
	})
}

// apiToken runs `caddy api-token args…`, which must succeed.
func (h *harness) apiToken(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	args = append([]string{"api-token"}, args...)
	stdout, stderr, err := h.run(nil, args...)
	if err != nil {
		t.Fatalf("caddy %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout, stderr
}

// mustFail runs a Caddy command that must exit with status 1, and returns
// what it printed.
func (h *harness) mustFail(t *testing.T, args ...string) string {
	t.Helper()
	stdout, stderr, err := h.run(nil, args...)
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 {
		t.Errorf("caddy %s: want exit status 1, got %v\n%s%s", strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout + stderr
}

// activeTokenIDs lists user's active tokens through the admin API, with
// `caddy api-token list --json`, oldest first.
func (h *harness) activeTokenIDs(t *testing.T, adminAddr, user string) []string {
	t.Helper()
	stdout, _ := h.apiToken(t, "list", "--address", adminAddr, "--user", user, "--status", "active", "--json")
	var tokens []struct {
		ID   string `json:"id"`
		User string `json:"user"`
	}
	if err := json.Unmarshal([]byte(stdout), &tokens); err != nil {
		t.Fatalf("list --json printed %q: %v", stdout, err)
	}
	var ids []string
	for _, tok := range tokens {
		if tok.User != user {
			t.Errorf("list --user %s listed a token of %s", user, tok.User)
		}
		ids = append(ids, tok.ID)
	}
	return ids
}

// harness runs the binaries under test with a private environment.
type harness struct {
	t     *testing.T
	caddy string   // the Caddy binary
	curl  string   // the curl binary
	env   []string // environment of every child process
}

// run runs the Caddy binary with args, bounded by commandTimeout.
func (h *harness) run(stdin []byte, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.caddy, args...)
	cmd.Env = h.env
	cmd.WaitDelay = 5 * time.Second
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("caddy %s: no answer within %s: %w", strings.Join(args, " "), commandTimeout, err)
	}
	return out.String(), errOut.String(), err
}

// createToken makes a token in the file store at path with
// `caddy api-token create` and returns its secret.
func (h *harness) createToken(path string, args ...string) string {
	h.t.Helper()
	args = append([]string{"api-token", "create", "--store", "file:" + path}, args...)
	stdout, stderr, err := h.run(nil, args...)
	if err != nil {
		h.t.Fatalf("caddy %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	// The secret alone on standard output, so that scripts can capture it.
	secret := strings.TrimSuffix(stdout, "\n")
	if !secretPattern.MatchString(secret) {
		h.t.Fatalf("caddy %s printed %q on stdout, want only a token matching %s\nstderr:\n%s",
			strings.Join(args, " "), stdout, secretPattern, stderr)
	}
	return secret
}

// hash returns what `caddy api-token hash` prints for secret.
func (h *harness) hash(secret string) string {
	h.t.Helper()
	stdout, stderr, err := h.run([]byte(secret+"\n"), "api-token", "hash")
	if err != nil {
		h.t.Fatalf("caddy api-token hash: %v\n%s", err, stderr)
	}
	return strings.TrimSuffix(stdout, "\n")
}

// startCaddy runs `caddy run` with caddyfile until the test ends, and
// waits until siteAddr accepts connections. Its output goes to a file that
// is logged if the test fails. stop interrupts it and waits for it to end,
// as an operator's restart would; the test's clean-up calls it too.
func (h *harness) startCaddy(dir, caddyfile, siteAddr string) (stop func()) {
	t := h.t
	t.Helper()
	logPath := filepath.Join(dir, "caddy-run.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(h.caddy, "run", "--config", caddyfile, "--adapter", "caddyfile")
	cmd.Env = h.env
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("starting caddy run: %v", err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	var stopOnce sync.Once
	stop = func() {
		stopOnce.Do(func() {
			select {
			case <-exited:
			default:
				_ = cmd.Process.Signal(os.Interrupt)
				select {
				case <-exited:
				case <-time.After(stopTimeout):
					t.Errorf("caddy run did not stop within %s of an interrupt; killing it", stopTimeout)
					_ = cmd.Process.Kill()
					<-exited
				}
			}
			logFile.Close()
			if t.Failed() {
				out, _ := os.ReadFile(logPath)
				t.Logf("caddy run output:\n%s", out)
			}
		})
	}
	// Registered after t.TempDir's own clean-up, so it runs first.
	t.Cleanup(stop)

	deadline := time.Now().Add(startTimeout)
	for {
		conn, err := net.DialTimeout("tcp", siteAddr, time.Second)
		if err == nil {
			conn.Close()
			return stop
		}
		select {
		case <-exited:
			t.Fatalf("caddy run exited before serving %s: %v", siteAddr, waitErr)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy run: %s accepts no connections after %s: %v", siteAddr, startTimeout, err)
		}
	}
}

// response is one HTTP response as curl -i printed it.
type response struct {
	status int
	header http.Header
	body   string
	raw    string
}

// curlRequest sends one request with the real curl and parses its output.
// Only 127.0.0.1 is ever asked: curl ignores proxy settings and any
// ~/.curlrc (-q, and HOME is a temporary directory).
func (h *harness) curlRequest(t *testing.T, args ...string) response {
	t.Helper()
	args = append([]string{"-q", "-sS", "-i", "--http1.1", "--noproxy", "*",
		"--max-time", strconv.Itoa(curlMaxTime)}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(curlMaxTime+5)*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.curl, args...)
	cmd.Env = h.env
	cmd.WaitDelay = 5 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("curl %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
	}
	resp, err := parseCurlOutput(out.Bytes())
	if err != nil {
		t.Fatalf("curl %s: %v; output:\n%s", strings.Join(args, " "), err, out.String())
	}
	return resp
}

// parseCurlOutput reads the status line, headers and body that curl -i
// prints, skipping interim (1xx) responses. curl has already undone any
// chunked transfer encoding, so the body is everything after the headers.
func parseCurlOutput(raw []byte) (response, error) {
	rest := raw
	for {
		head, body, ok := bytes.Cut(rest, []byte("\r\n\r\n"))
		if !ok {
			return response{}, errors.New("no end of the response headers")
		}
		tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(append(head, "\r\n\r\n"...))))
		line, err := tp.ReadLine()
		if err != nil {
			return response{}, fmt.Errorf("reading the status line: %v", err)
		}
		proto, afterProto, _ := strings.Cut(line, " ")
		code, _, _ := strings.Cut(afterProto, " ")
		status, err := strconv.Atoi(code)
		if !strings.HasPrefix(proto, "HTTP/") || err != nil {
			return response{}, fmt.Errorf("malformed status line %q", line)
		}
		header, err := tp.ReadMIMEHeader()
		if err != nil {
			return response{}, fmt.Errorf("reading the headers: %v", err)
		}
		if status >= 100 && status < 200 {
			rest = body
			continue
		}
		return response{status: status, header: http.Header(header), body: string(body), raw: string(raw)}, nil
	}
}

// caddyBinary returns $CADDY_BINARY, or builds a Caddy binary with the
// plugin with scripts/build-caddy.sh. A failed build fails the test.
func caddyBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CADDY_BINARY"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			t.Fatalf("CADDY_BINARY=%s: %v", p, err)
		}
		info, err := os.Stat(abs)
		if err != nil {
			t.Fatalf("CADDY_BINARY=%s: %v", p, err)
		}
		if !info.Mode().IsRegular() || info.Mode().Perm()&0o111 == 0 {
			t.Fatalf("CADDY_BINARY=%s is not an executable file", p)
		}
		t.Logf("using CADDY_BINARY=%s", abs)
		return abs
	}

	root := repoRoot(t)
	out := filepath.Join(t.TempDir(), "caddy")
	budget := buildTimeout
	if deadline, ok := t.Deadline(); ok {
		// Leave a minute of the go test timeout for the test itself.
		budget = min(budget, time.Until(deadline)-time.Minute)
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "scripts", "build-caddy.sh"), out)
	cmd.Dir = root
	// The script's go commands run in its process group; stop them all, with
	// SIGTERM so that the builder removes its temporary folder.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	t.Logf("CADDY_BINARY is not set; building Caddy with scripts/build-caddy.sh (up to %s)", budget.Round(time.Second))
	start := time.Now()
	output, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (gave up after %s)", err, budget.Round(time.Second))
		}
		t.Fatalf("scripts/build-caddy.sh %s failed: %v\n%s", out, err, output)
	}
	t.Logf("built %s in %s", out, time.Since(start).Round(100*time.Millisecond))
	return out
}

// repoRoot is the repository root, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.Contains(gomod, []byte("module github.com/caddy-apitoken/caddy-apitoken\n")) {
		t.Fatalf("%s is not the caddy-apitoken repository root (go.mod: %v)", root, err)
	}
	return root
}

// childEnv is this process's environment with HOME and the XDG
// directories moved into dir, so that no child touches the real home.
func childEnv(t *testing.T, dir string) []string {
	t.Helper()
	private := map[string]string{
		"HOME":            filepath.Join(dir, "home"),
		"XDG_DATA_HOME":   filepath.Join(dir, "xdg-data"),
		"XDG_CONFIG_HOME": filepath.Join(dir, "xdg-config"),
		"XDG_CACHE_HOME":  filepath.Join(dir, "xdg-cache"),
	}
	var env []string
	for _, kv := range os.Environ() {
		key, _, _ := strings.Cut(kv, "=")
		if _, ok := private[key]; !ok {
			env = append(env, kv)
		}
	}
	for key, path := range private {
		if err := os.MkdirAll(path, 0o700); err != nil {
			t.Fatal(err)
		}
		env = append(env, key+"="+path)
	}
	return env
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// caddyfileText is a Caddyfile that serves siteAddr behind api_token_auth;
// extra is one more line in the api_token_auth block.
func caddyfileText(adminAddr, siteAddr, dataDir, store, extra string) string {
	if extra != "" {
		extra = "\t\t" + extra + "\n"
	}
	return fmt.Sprintf(`{
	admin %s
	storage file_system %q
	persist_config off
}

http://%s {
	bind 127.0.0.1
	api_token_auth {
		store file %q
%s	}
	respond "hello {http.auth.user.id}"
}
`, adminAddr, dataDir, siteAddr, store, extra)
}

// writeFile writes content to dir/name and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// readStoredHashes returns the stored hash of each token in the store
// file, by token name.
func readStoredHashes(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Tokens []struct {
			Name string `json:"name"`
			Hash string `json:"hash"`
		} `json:"tokens"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("store file %s: %v", path, err)
	}
	hashes := make(map[string]string)
	for _, tok := range doc.Tokens {
		hashes[tok.Name] = tok.Hash
	}
	return hashes
}

func hexSHA256(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
