//go:build unix

package binarytest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// faultWait bounds each wait of these tests for something to happen
// (another server's poll to load a change, a write after a crash). It is
// a cap, never a pause: the waits poll and end as soon as it holds.
const faultWait = 10 * time.Second

// TestFaultTwoServersOneFileStore runs two real Caddy servers on one
// token file and creates tokens through both admin APIs, and with `caddy
// api-token create --store file:…`, all at once: every token must be in
// the file, and each server must accept every token once its poll has
// read the other writers' changes (issue 6).
func TestFaultTwoServersOneFileStore(t *testing.T) {
	bin := caddyBinary(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "tokens.json")
	// Lockout off: until its poll has read the other server's writes, a
	// server refuses its tokens, and the polls below would get
	// 127.0.0.1 banned.
	const noLockout = "lockout {\n\t\t\tmax_failures 0\n\t\t\tip_max_failures 0\n\t\t}"
	servers := []*caddyServer{
		faultStartFileCaddy(t, bin, "a", store, noLockout),
		faultStartFileCaddy(t, bin, "b", store, noLockout),
	}
	client := loopbackClient()
	t.Cleanup(client.CloseIdleConnections) // see TestFaultReloadUnderLoad

	const perServer, workers, byCLI = 25, 5, 5
	var (
		mu      sync.Mutex
		created = map[string]tokenView{} // by id
		owner   = map[string]string{}    // user, by token id
		wg      sync.WaitGroup
	)
	cli := &harness{t: t, caddy: bin, env: childEnv(t, dir)}
	for i := range byCLI {
		wg.Go(func() {
			args := []string{"api-token", "create", "--store", "file:" + store, "--user", "user-cli", "--name", fmt.Sprint("cli-", i), "--json"}
			stdout, stderr, err := cli.run(nil, args...)
			var v tokenView
			if err == nil {
				err = json.Unmarshal([]byte(stdout), &v)
			}
			if err != nil || v.ID == "" || !secretPattern.MatchString(v.Token) {
				t.Errorf("caddy %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout, stderr)
				return
			}
			mu.Lock()
			created[v.ID], owner[v.ID] = v, "user-cli"
			mu.Unlock()
		})
	}
	for _, s := range servers {
		for w := range workers {
			wg.Go(func() {
				for i := w; i < perServer; i += workers {
					user := "user-" + s.name
					body := fmt.Sprintf(`{"user":%q,"name":"%s-%d"}`, user, s.name, i)
					v, err := faultCreateToken(client, s, body)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					created[v.ID], owner[v.ID] = v, user
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if want := len(servers)*perServer + byCLI; len(created) != want {
		t.Fatalf("%d distinct tokens created, want %d", len(created), want)
	}

	stored := faultStoredTokens(t, store)
	var lost []string
	for id := range created {
		if _, ok := stored[id]; !ok {
			lost = append(lost, id)
		}
	}
	if len(lost) > 0 || len(stored) != len(created) {
		t.Fatalf("the file holds %d tokens, want the %d created: %d lost (%s)",
			len(stored), len(created), len(lost), strings.Join(lost, " "))
	}

	for _, s := range servers {
		for id, v := range created {
			user := owner[id]
			faultWaitFor(t, fmt.Sprintf("server %s to accept token %s of %s", s.name, id, user), func() (bool, string) {
				st, body, err := request(client, http.MethodGet, s.site+"/", v.Token)
				return err == nil && st == http.StatusOK && body == "hello "+user, fmt.Sprintf("%d %s %v", st, body, err)
			})
		}
	}
}

// TestFaultKilledWriterLeavesAValidFile kills `caddy api-token create
// --store file:…` again and again: at moments spread over its whole run
// while another create writes the same file, and just after its write
// has begun. After each kill the file must decode, hold every token whose
// creation was acknowledged, and take the next write: no half-written
// file, no stale lock (issue 6).
func TestFaultKilledWriterLeavesAValidFile(t *testing.T) {
	bin := caddyBinary(t)
	dir := t.TempDir()
	h := &harness{t: t, caddy: bin, env: childEnv(t, dir)}
	store := filepath.Join(dir, "tokens.json")
	temps := filepath.Join(dir, ".tokens.json.tmp-*")
	// A store of some size, so that a write (encoding, writing, syncing)
	// takes a while.
	faultWriteStore(t, store, 1000)

	var acked []string // secrets of acknowledged creations
	start := time.Now()
	acked = append(acked, h.createToken(store, "--user", "warm-up"))
	runTime := time.Since(start)
	t.Logf("one create on a store of 1000 tokens: %s", runTime.Round(time.Millisecond))

	const rounds = 30
	var killed, killedInWrite, leftTemp int
	for round := range rounds {
		before, err := os.Stat(store)
		if err != nil {
			t.Fatal(err)
		}
		victim := faultStartCreate(t, h, store, fmt.Sprintf("victim-%d", round))
		creates := []*faultCreate{victim}
		var when string
		if round%2 == 0 {
			// While another create runs, at a moment from the start to
			// 1.2 times a run.
			creates = append(creates, faultStartCreate(t, h, store, fmt.Sprintf("other-%d", round)))
			delay := runTime * 12 * time.Duration(round) / (10 * rounds)
			time.Sleep(delay)
			when = fmt.Sprintf("%s after its start", delay.Round(time.Millisecond))
		} else {
			// Alone, 0 to 2 ms after its write begins: inside it, or
			// just after it.
			if !victim.awaitWrite(store, temps, before) {
				t.Logf("round %d: the create ended before its write was seen", round)
			}
			delay := time.Duration(round/2%5) * 500 * time.Microsecond
			time.Sleep(delay)
			when = fmt.Sprintf("%s after its write began", delay)
		}
		_ = victim.cmd.Process.Signal(syscall.SIGKILL)
		for _, c := range creates {
			secret, err := c.wait()
			switch {
			case err == nil:
				acked = append(acked, secret)
			case c == victim && faultWasKilled(err):
				killed++
				if round%2 == 1 {
					killedInWrite++
					if m, _ := filepath.Glob(temps); len(m) > 0 {
						leftTemp++
					}
				}
			default:
				t.Fatalf("round %d: caddy api-token create --user %s: %v\nstderr:\n%s", round, c.user, err, c.stderr.String())
			}
		}
		faultCheckStore(t, store, acked, fmt.Sprintf("round %d, killed %s", round, when))
		if t.Failed() {
			t.FailNow()
		}
	}
	t.Logf("%d rounds: %d creates killed before they finished, %d of them after their write began (%d left a temporary file)",
		rounds, killed, killedInWrite, leftTemp)
	if killedInWrite == 0 {
		t.Errorf("no create was killed after its write began: the test tested nothing")
	}

	// The next writer neither waits for a dead one's lock nor trips over
	// its temporary file, and removes it.
	c := faultStartCreate(t, h, store, "after")
	secret, err := c.wait()
	if err != nil {
		t.Fatalf("create after the kills: %v\n%s", err, c.stderr.String())
	}
	faultCheckStore(t, store, append(acked, secret), "after the kills")
	if m, _ := filepath.Glob(temps); len(m) > 0 {
		t.Errorf("temporary files left after a successful write: %q", m)
	}
}

// TestFaultReloadUnderLoad sends requests with a valid token without a
// pause while Caddy reloads its config several times: every one must
// succeed, and a CAPTCHA challenge and an IP ban set up before the
// reloads must still hold after them (issue 6, SPEC §7).
func TestFaultReloadUnderLoad(t *testing.T) {
	bin := caddyBinary(t)
	dir := t.TempDir()
	h := &harness{t: t, caddy: bin, env: childEnv(t, dir)}
	store := filepath.Join(dir, "tokens.json")
	alice := h.createToken(store, "--user", "alice")
	bob := h.createToken(store, "--user", "bob")
	wrong := h.createToken(filepath.Join(dir, "other-tokens.json"), "--user", "bob")

	// Caddy takes the client address from X-Forwarded-For of requests
	// from 127.0.0.1, so that the challenge and the ban below are of
	// addresses other than the load's own (127.0.0.1).
	adminAddr, siteAddr := freeAddr(t), freeAddr(t)
	config := func(extra string) string {
		text := caddyfileText(adminAddr, siteAddr, filepath.Join(dir, "data"), store, extra)
		return strings.Replace(text, "\tpersist_config off\n",
			"\tpersist_config off\n\tservers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t}\n", 1)
	}
	// Two configs that differ only in an option unrelated to the load.
	configs := []string{
		writeFile(t, dir, "Caddyfile", config("")),
		writeFile(t, dir, "Caddyfile.cookies", config("session_cookies JSESSIONID")),
	}
	h.startCaddy(dir, configs[0], siteAddr)
	site := "http://" + siteAddr + "/"
	client := loopbackClient()
	// Before Caddy is stopped: the client may hold a connection it
	// dialled and never used, which Caddy's graceful stop waits 5 s for
	// (Go's http.Server treats a new connection as idle only after 5 s).
	t.Cleanup(client.CloseIdleConnections)
	from := func(ip string, header ...string) map[string]string {
		m := map[string]string{"X-Forwarded-For": ip}
		for i := 0; i+1 < len(header); i += 2 {
			m[header[i]] = header[i+1]
		}
		return m
	}
	basic := func(user, secret string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+secret))
	}

	const (
		challengedIP = "192.0.2.10"
		bannedIP     = "192.0.2.20"
		challenged   = `{"message":"For security reasons you must answer a CAPTCHA question."}`
		banned       = `{"message":"Too many failed authentication attempts from IP address ` + bannedIP + `"}`
	)
	// A challenge for bob at challengedIP: max_failures (5) bad attempts.
	for i := range 5 {
		st, body := faultGet(t, client, site, from(challengedIP, "Authorization", basic("bob", wrong)))
		if st != http.StatusUnauthorized {
			t.Fatalf("bob's bad attempt %d: %d %s", i+1, st, body)
		}
	}
	// A ban of bannedIP: ip_max_failures (20) bad attempts.
	for i := range 20 {
		st, body := faultGet(t, client, site, from(bannedIP, "Authorization", "Bearer "+wrong))
		if st != http.StatusUnauthorized {
			t.Fatalf("bad attempt %d from %s: %d %s", i+1, bannedIP, st, body)
		}
	}
	checkLockouts := func(when string) {
		t.Helper()
		if st, body := faultGet(t, client, site, from(challengedIP, "Authorization", basic("bob", bob))); st != http.StatusForbidden || body != challenged {
			t.Errorf("%s: bob's right token from %s: %d %s, want 403 %s", when, challengedIP, st, body, challenged)
		}
		if st, body := faultGet(t, client, site, from(bannedIP, "Authorization", "Bearer "+alice)); st != http.StatusTooManyRequests || body != banned {
			t.Errorf("%s: a right token from %s: %d %s, want 429 %s", when, bannedIP, st, body, banned)
		}
		// Neither holds the load's own address, or bob elsewhere.
		if st, body := faultGet(t, client, site, map[string]string{"Authorization": basic("bob", bob)}); st != http.StatusOK {
			t.Errorf("%s: bob's right token from 127.0.0.1: %d %s, want 200", when, st, body)
		}
	}
	checkLockouts("before the reloads")
	if t.Failed() {
		t.FailNow()
	}

	// The load: a few clients sending alice's token without a pause,
	// bounded by a number of requests, until told to stop.
	const loadClients, maxPerClient = 4, 20000
	var (
		sent, failed, dropped atomic.Int64
		failMu                sync.Mutex
		failures              []string // the first few
		stop                  = make(chan struct{})
		load                  sync.WaitGroup
	)
	for range loadClients {
		load.Go(func() {
			for range maxPerClient {
				select {
				case <-stop:
					return
				default:
				}
				st, body, err := request(client, http.MethodGet, site, alice)
				sent.Add(1)
				if err != nil {
					// No answer at all: the connection was reset before
					// any handler saw the request. Caddy hands its
					// listener to the new config by binding a second
					// socket (SO_REUSEPORT) and closing the old one, and
					// Linux resets the connections still queued on the
					// old one. A client retries such a GET; so does
					// this, once, on a new connection.
					dropped.Add(1)
					st, body, err = request(client, http.MethodGet, site, alice)
				}
				if err == nil && st == http.StatusOK && body == "hello alice" {
					continue
				}
				failed.Add(1)
				failMu.Lock()
				if len(failures) < 10 {
					failures = append(failures, fmt.Sprintf("%d %q %v", st, body, err))
				}
				failMu.Unlock()
			}
		})
	}
	var stopOnce sync.Once
	endLoad := func() { stopOnce.Do(func() { close(stop); load.Wait() }) }
	t.Cleanup(endLoad)
	waitSent := func(n int64) {
		t.Helper()
		faultWaitFor(t, fmt.Sprintf("%d requests of the load", n), func() (bool, string) {
			return sent.Load() >= n, fmt.Sprintf("%d sent", sent.Load())
		})
	}

	waitSent(100)
	const reloads = 6
	var took []string
	for i := range reloads {
		next := configs[(i+1)%2]
		start := time.Now()
		if _, stderr, err := h.run(nil, "reload", "--config", next, "--adapter", "caddyfile", "--address", adminAddr); err != nil {
			t.Fatalf("reload %d: %v\n%s", i+1, err, stderr)
		}
		took = append(took, time.Since(start).Round(time.Millisecond).String())
		// Caddy skips a config equal to the running one: check that this
		// one is in force.
		if got, want := faultConfigHas(t, client, adminAddr, "JSESSIONID"), i%2 == 0; got != want {
			t.Fatalf("after reload %d the running config mentions JSESSIONID: %v, want %v", i+1, got, want)
		}
		waitSent(sent.Load() + 50) // load between the reloads
	}
	endLoad()
	t.Logf("%d requests with a valid token during %d reloads (caddy reload took %s): %d failed; %d connections reset without an answer, then retried",
		sent.Load(), reloads, strings.Join(took, ", "), failed.Load(), dropped.Load())
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests with a valid token failed during the reloads; the first: %s",
			n, sent.Load(), strings.Join(failures, "; "))
	}
	checkLockouts("after the reloads")
}

// faultStartFileCaddy starts `caddy run` with api_token_auth on the
// token file store, in a directory of its own (its Caddy storage, hence
// its lockouts, are its own); extra is one more line of the handler.
func faultStartFileCaddy(t *testing.T, bin, name, store, extra string) *caddyServer {
	t.Helper()
	dir := t.TempDir()
	h := &harness{t: t, caddy: bin, env: childEnv(t, dir)}
	adminAddr, siteAddr := freeAddr(t), freeAddr(t)
	caddyfile := writeFile(t, dir, "Caddyfile", caddyfileText(adminAddr, siteAddr, filepath.Join(dir, "data"), store, extra))
	h.startCaddy(dir, caddyfile, siteAddr)
	return &caddyServer{
		name:      name,
		adminBase: "http://" + adminAddr + "/api-token-auth/default",
		site:      "http://" + siteAddr,
	}
}

// faultCreateToken creates a token through s's admin API; unlike
// caddyServer.createToken it may run outside the test's goroutine.
func faultCreateToken(c *http.Client, s *caddyServer, body string) (tokenView, error) {
	resp, err := c.Post(s.adminBase+"/tokens", "application/json", strings.NewReader(body))
	if err != nil {
		return tokenView{}, fmt.Errorf("server %s: POST /tokens: %v", s.name, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return tokenView{}, fmt.Errorf("server %s: POST /tokens %s: %d %s", s.name, body, resp.StatusCode, data)
	}
	var v tokenView
	if err := json.Unmarshal(data, &v); err != nil || v.ID == "" || !secretPattern.MatchString(v.Token) {
		return tokenView{}, fmt.Errorf("server %s: POST /tokens answered %s (%v)", s.name, data, err)
	}
	return v, nil
}

// faultStoredTokens opens the store file as the plugin does, which fails
// on a file that does not decode or validate, and returns its tokens by id.
func faultStoredTokens(t *testing.T, path string) map[string]tokenstore.Token {
	t.Helper()
	s, err := tokenstore.OpenFile(path, nil)
	if err != nil {
		t.Fatalf("the store file does not open: %v", err)
	}
	defer s.Close()
	list, err := s.ListTokens(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]tokenstore.Token, len(list))
	for _, tok := range list {
		out[tok.ID] = tok
	}
	return out
}

// faultCheckStore fails the test unless the store file opens and holds a
// token for each of secrets.
func faultCheckStore(t *testing.T, path string, secrets []string, when string) {
	t.Helper()
	s, err := tokenstore.OpenFile(path, nil)
	if err != nil {
		t.Errorf("%s: the store file does not open: %v", when, err)
		return
	}
	defer s.Close()
	for _, secret := range secrets {
		if _, err := s.LookupToken(context.Background(), tokenstore.DigestOf(secret)); err != nil {
			t.Errorf("%s: an acknowledged token is not in the file: %v", when, err)
		}
	}
}

// faultWriteStore writes a store file of n tokens, as the plugin would.
func faultWriteStore(t *testing.T, path string, n int) {
	t.Helper()
	doc := struct {
		Version int                `json:"version"`
		Tokens  []tokenstore.Token `json:"tokens"`
	}{Version: 1}
	now := time.Now()
	for i := range n {
		tok, _, err := tokenstore.NewToken(tokenstore.TokenRequest{User: fmt.Sprintf("user-%d", i%50), Name: fmt.Sprint(i)},
			tokenstore.DefaultPrefix, now, 0)
		if err != nil {
			t.Fatal(err)
		}
		doc.Tokens = append(doc.Tokens, tok)
	}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	faultCheckStore(t, path, nil, "as written by the test")
}

// faultCreate is one `caddy api-token create --store file:…` under way.
type faultCreate struct {
	user           string
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{} // closed when it has ended
	err            error         // of cmd.Wait, once done
}

// faultStartCreate starts a create, which is killed if it has not ended
// within faultWait.
func faultStartCreate(t *testing.T, h *harness, store, user string) *faultCreate {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultWait)
	c := &faultCreate{user: user, done: make(chan struct{})}
	c.cmd = exec.CommandContext(ctx, h.caddy, "api-token", "create", "--store", "file:"+store, "--user", user)
	c.cmd.Env = h.env
	c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
	if err := c.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting caddy api-token create: %v", err)
	}
	go func() {
		defer cancel()
		c.err = c.cmd.Wait()
		if ctx.Err() != nil {
			c.err = fmt.Errorf("no end within %s, killed: %w", faultWait, c.err)
		}
		close(c.done)
	}()
	t.Cleanup(func() { <-c.done })
	return c
}

// awaitWrite waits until the create's write has begun: a temporary file
// matching temps exists, or the store file is no longer as before. It
// polls without a pause worth the name (a write takes milliseconds), and
// reports whether it saw the write begin before the create ended.
func (c *faultCreate) awaitWrite(store, temps string, before os.FileInfo) bool {
	for {
		if m, _ := filepath.Glob(temps); len(m) > 0 {
			return true
		}
		if now, err := os.Stat(store); err != nil || !os.SameFile(now, before) ||
			now.Size() != before.Size() || !now.ModTime().Equal(before.ModTime()) {
			return true
		}
		select {
		case <-c.done:
			return false
		case <-time.After(50 * time.Microsecond):
		}
	}
}

// wait waits for the create to end and returns the secret it printed.
func (c *faultCreate) wait() (string, error) {
	<-c.done
	if c.err != nil {
		return "", c.err
	}
	secret := strings.TrimSuffix(c.stdout.String(), "\n")
	if !secretPattern.MatchString(secret) {
		return "", fmt.Errorf("printed %q, want a token", c.stdout.String())
	}
	return secret, nil
}

func faultWasKilled(err error) bool {
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		return false
	}
	ws, ok := exitErr.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// faultWaitFor polls cond until it holds, and fails the test if it does
// not within faultWait, with what cond last saw.
func faultWaitFor(t *testing.T, what string, cond func() (ok bool, saw string)) {
	t.Helper()
	deadline := time.Now().Add(faultWait)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s; last saw: %s", faultWait, what, saw)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// faultGet sends GET url with header; a transport error fails the test.
func faultGet(t *testing.T, c *http.Client, url string, header map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(data)
}

// faultConfigHas reports whether the running config, as the admin API
// shows it, contains s.
func faultConfigHas(t *testing.T, c *http.Client, adminAddr, s string) bool {
	t.Helper()
	_, body := faultGet(t, c, "http://"+adminAddr+"/config/", nil)
	return strings.Contains(body, s)
}
