package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// run executes `caddy api-token <args>` as the caddy command would.
func run(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := &cobra.Command{Use: "api-token", SilenceUsage: true, SilenceErrors: true}
	addSubcommands(cmd)
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// mustRun runs a command that must succeed.
func mustRun(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	stdout, stderr, err := run(t, "", args...)
	if err != nil {
		t.Fatalf("api-token %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout, stderr
}

// secretOf checks that stdout is exactly one generated token and returns it.
func secretOf(t *testing.T, stdout string) string {
	t.Helper()
	secret := strings.TrimSuffix(stdout, "\n")
	if strings.Contains(secret, "\n") || !strings.HasPrefix(secret, "cat_") || !tokenstore.PlausibleSecret(secret, "cat_") {
		t.Fatalf("stdout is not exactly one token: %q", stdout)
	}
	return secret
}

// decodeJSON decodes a command's --json output.
func decodeJSON(t *testing.T, stdout string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(stdout), v); err != nil {
		t.Fatalf("--json printed %q: %v", stdout, err)
	}
}

// tableRows splits a table into its rows' cells, heading first.
func tableRows(out string) [][]string {
	var rows [][]string
	for line := range strings.SplitSeq(strings.TrimSuffix(out, "\n"), "\n") {
		rows = append(rows, regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), -1))
	}
	return rows
}

func TestCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.json")
	stdout, stderr, err := run(t, "", "create", "--store", "file:"+path, "--user", "alice",
		"--name", "laptop", "--scope", "read-only", "--expires", "90d", "--ip", "10.0.0.0/8", "--ip", "192.0.2.1",
		"--header", "X-Team=blue=green")
	if err != nil {
		t.Fatalf("create: %v (stderr %s)", err, stderr)
	}
	secret := secretOf(t, stdout)

	store, err := tokenstore.OpenFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	tok, err := store.LookupToken(context.Background(), tokenstore.DigestOf(secret))
	if err != nil {
		t.Fatalf("the printed secret is not in the store: %v", err)
	}
	if tok.User != "alice" || tok.Name != "laptop" || tok.Scope != tokenstore.ScopeReadOnly ||
		strings.Join(tok.AllowedIPs, ",") != "10.0.0.0/8,192.0.2.1" || len(tok.RequiredHeaders) != 1 || tok.RequiredHeaders["X-Team"] != "blue=green" {
		t.Errorf("stored token %+v", tok)
	}
	if tok.Expires == nil || tok.Expires.Sub(time.Now()) < 89*24*time.Hour || tok.Expires.Sub(time.Now()) > 90*24*time.Hour {
		t.Errorf("expires = %v, want 90 days from now", tok.Expires)
	}
	if !strings.Contains(stderr, tok.ID) || !strings.Contains(stderr, "file:"+path) || strings.Contains(stderr, secret) {
		t.Errorf("stderr should name the token id and store, and not repeat the secret: %q", stderr)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(secret)) {
		t.Error("the store file contains the secret")
	}

	t.Run("json and an RFC 3339 expiry", func(t *testing.T) {
		at := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
		stdout, _ := mustRun(t, "create", "--store", "file:"+path, "--user", "bob", "--expires", at.Format(time.RFC3339), "--json")
		var v TokenView
		decodeJSON(t, stdout, &v)
		if v.User != "bob" || v.Scope != tokenstore.ScopeReadWrite || v.Status != "active" ||
			v.Expires == nil || !v.Expires.Equal(at) || !tokenstore.PlausibleSecret(v.Token, "cat_") {
			t.Errorf("create --json printed %+v", v)
		}
	})

	t.Run("import by hash prints no secret", func(t *testing.T) {
		const legacy = "legacy-token-from-elsewhere"
		stdout, stderr := mustRun(t, "create", "--store", "file:"+path, "--user", "carol", "--hash", tokenstore.HashSecret(legacy))
		if stdout != "" || !strings.Contains(stderr, "Imported token") {
			t.Errorf("import printed %q, stderr %q", stdout, stderr)
		}
		s, err := tokenstore.OpenFile(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if tok, err := s.LookupToken(context.Background(), tokenstore.DigestOf(legacy)); err != nil || tok.User != "carol" {
			t.Errorf("imported token: %+v, %v", tok, err)
		}
	})
}

func TestCreateErrors(t *testing.T) {
	path := "file:" + filepath.Join(t.TempDir(), "tokens.json")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"create", "--store", "mysql:x", "--user", "alice"}, `unknown type "mysql"`},
		{[]string{"create", "--store", "tokens.json", "--user", "alice"}, "--store"},
		{[]string{"create", "--store", path}, "--user is required"},
		{[]string{"create", "--store", path, "--user", "a", "--scope", "admin"}, "--scope"},
		{[]string{"create", "--store", path, "--user", "a", "--expires", "soon"}, "--expires"},
		{[]string{"create", "--store", path, "--user", "a", "--expires", "2001-01-01T00:00:00Z"}, "not in the future"},
		{[]string{"create", "--store", path, "--user", "a", "--ip", "10.0.0.0/40"}, "--ip"},
		{[]string{"create", "--store", path, "--user", "a", "--header", "X-Team"}, "--header"},
		{[]string{"create", "--store", path, "--user", "a", "--header", "X Team=blue"}, "--header"},
		{[]string{"create", "--store", path, "--user", "a", "--hash", "md5:abc"}, "hash"},
		{[]string{"create", "--store", path, "--user", "a", "--prefix", "a b"}, "--prefix"},
		{[]string{"create", "--store", path, "--user", "a", "--address", "localhost:1"}, "--address"},
		{[]string{"create", "--address", "localhost:1", "--user", "a", "--prefix", "xyz_"}, "--prefix goes only with --store"},
		{[]string{"create", "--store", path, "--user", "a", "--realm", ""}, "--realm"},
		{[]string{"create", "--store", path, "--user", "a", "extra"}, "unknown command"},
	}
	for _, tc := range tests {
		stdout, _, err := run(t, "", tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to contain %q", tc.args, err, tc.want)
		}
		if stdout != "" {
			t.Errorf("%v: printed %q on failure", tc.args, stdout)
		}
	}
}

// TestOffline runs every command on a store file, with no server.
func TestOffline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.json")
	store := []string{"--store", "file:" + path}
	cmd := func(args ...string) []string { return append(args, store...) }

	var alice TokenView
	out, _ := mustRun(t, cmd("create", "--user", "alice", "--name", "laptop", "--scope", "read-only",
		"--expires", "30d", "--ip", "127.0.0.1", "--header", "X-Team=blue", "--json")...)
	decodeJSON(t, out, &alice)
	bobSecret := secretOf(t, must(mustRun(t, cmd("create", "--user", "bob", "--name", "ci")...)))
	var bob TokenView
	mustRun(t, cmd("create", "--user", "bob")...)

	t.Run("list", func(t *testing.T) {
		out, _ := mustRun(t, cmd("list")...)
		rows := tableRows(out)
		want := []string{"ID", "USER", "NAME", "SCOPE", "STATUS", "EXPIRES", "LAST USED"}
		if len(rows) != 4 || strings.Join(rows[0], "|") != strings.Join(want, "|") {
			t.Fatalf("list printed:\n%s", out)
		}
		first := rows[1]
		if first[0] != alice.ID || first[1] != "alice" || first[2] != "laptop" || first[3] != "read-only" ||
			first[4] != "active" || first[5] != alice.Expires.Format(time.RFC3339) || first[6] != "never" {
			t.Errorf("alice's row: %q", first)
		}
		if rows[3][2] != "-" || rows[3][5] != "never" {
			t.Errorf("a token without name and expiry: %q", rows[3])
		}
		if strings.Contains(out, "sha256:") || strings.Contains(out, bobSecret) {
			t.Error("list shows a hash or secret")
		}

		var tokens []TokenView
		decodeJSON(t, must(mustRun(t, cmd("list", "--user", "bob", "--json")...)), &tokens)
		if len(tokens) != 2 || tokens[0].User != "bob" || tokens[0].Name != "ci" || tokens[0].Token != "" {
			t.Fatalf("list --user bob --json: %+v", tokens)
		}
		bob = tokens[0]
		decodeJSON(t, must(mustRun(t, cmd("list", "--status", "revoked", "--json")...)), &tokens)
		if len(tokens) != 0 {
			t.Errorf("no token is revoked yet: %+v", tokens)
		}
		// An empty list is an empty table, and [] as JSON.
		if out, _ := mustRun(t, cmd("list", "--user", "nobody")...); len(tableRows(out)) != 1 {
			t.Errorf("empty list printed %q", out)
		}
		if out, _ := mustRun(t, cmd("list", "--user", "nobody", "--json")...); strings.TrimSpace(out) != "[]" {
			t.Errorf("empty list --json printed %q", out)
		}
	})

	t.Run("rotate", func(t *testing.T) {
		out, stderr := mustRun(t, cmd("rotate", alice.ID, "--grace", "1h")...)
		secret := secretOf(t, out)
		if !strings.Contains(stderr, "keeps working until") || !strings.Contains(stderr, alice.ID) {
			t.Errorf("rotate stderr: %q", stderr)
		}
		s, err := tokenstore.OpenFile(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		next, err := s.LookupToken(context.Background(), tokenstore.DigestOf(secret))
		old, oldErr := s.GetToken(context.Background(), alice.ID)
		s.Close()
		if err != nil || oldErr != nil {
			t.Fatalf("after rotate: %v, %v", err, oldErr)
		}
		if next.ID == alice.ID || next.User != "alice" || next.Name != "laptop" || next.Scope != tokenstore.ScopeReadOnly ||
			strings.Join(next.AllowedIPs, ",") != "127.0.0.1" || next.RequiredHeaders["X-Team"] != "blue" {
			t.Errorf("rotated token %+v", next)
		}
		if old.Expires == nil || time.Until(*old.Expires) > time.Hour || time.Until(*old.Expires) < 50*time.Minute {
			t.Errorf("old token expires %v, want in an hour", old.Expires)
		}

		var v TokenView
		decodeJSON(t, must(mustRun(t, cmd("rotate", next.ID, "--json")...)), &v)
		if v.RotatedFrom == nil || v.RotatedFrom.ID != next.ID || v.Token == "" || v.User != "alice" {
			t.Errorf("rotate --json: %+v", v)
		}
		// Without grace the old one stops at once, and cannot be rotated again.
		_, _, err = run(t, "", cmd("rotate", next.ID)...)
		if err == nil || !strings.Contains(err.Error(), "only an active token can be rotated") {
			t.Errorf("rotating an expired token: %v", err)
		}
	})

	t.Run("revoke", func(t *testing.T) {
		out, stderr := mustRun(t, cmd("revoke", bob.ID)...)
		if out != "" || !strings.Contains(stderr, "Revoked token "+bob.ID) {
			t.Errorf("revoke printed %q, stderr %q", out, stderr)
		}
		var tokens []TokenView
		decodeJSON(t, must(mustRun(t, cmd("list", "--status", "revoked", "--json")...)), &tokens)
		if len(tokens) != 1 || tokens[0].ID != bob.ID || tokens[0].Revoked == nil {
			t.Errorf("revoked tokens: %+v", tokens)
		}
		var answer struct {
			User    string `json:"user"`
			Revoked int    `json:"revoked"`
		}
		decodeJSON(t, must(mustRun(t, cmd("revoke", "--user", "bob", "--json")...)), &answer)
		if answer.User != "bob" || answer.Revoked != 1 {
			t.Errorf("revoke --user bob: %+v", answer)
		}
		if _, stderr := mustRun(t, cmd("revoke", "--user", "bob")...); !strings.Contains(stderr, "Revoked 0 token(s) of user bob") {
			t.Errorf("revoking again: %q", stderr)
		}
	})

	t.Run("user", func(t *testing.T) {
		out, stderr := mustRun(t, cmd("user", "alice", "--groups", "staff, ops")...)
		if rows := tableRows(out); len(rows) != 2 || strings.Join(rows[1], "|") != "alice|staff,ops|enabled" {
			t.Errorf("user alice --groups printed:\n%s", out)
		}
		if !strings.Contains(stderr, "Updated user alice") {
			t.Errorf("stderr %q", stderr)
		}
		// Omitted flags keep their value.
		var u UserView
		decodeJSON(t, must(mustRun(t, cmd("user", "alice", "--disable", "--json")...)), &u)
		if u.Name != "alice" || strings.Join(u.Groups, ",") != "staff,ops" || !u.Disabled {
			t.Errorf("user alice --disable: %+v", u)
		}
		decodeJSON(t, must(mustRun(t, cmd("user", "alice", "--json")...)), &u)
		if !u.Disabled || len(u.Groups) != 2 {
			t.Errorf("user alice: %+v", u)
		}
		decodeJSON(t, must(mustRun(t, cmd("user", "alice", "--enable", "--groups", "", "--json")...)), &u)
		if u.Disabled || len(u.Groups) != 0 {
			t.Errorf("user alice --enable --groups '': %+v", u)
		}
		mustRun(t, cmd("user", "dave", "--disable")...)
		out, _ = mustRun(t, cmd("user")...)
		if rows := tableRows(out); len(rows) != 3 || strings.Join(rows[1], "|") != "alice|-|enabled" || strings.Join(rows[2], "|") != "dave|-|disabled" {
			t.Errorf("user (list) printed:\n%s", out)
		}
		// An unlisted user is shown with its defaults.
		out, stderr = mustRun(t, cmd("user", "erin")...)
		if rows := tableRows(out); len(rows) != 2 || strings.Join(rows[1], "|") != "erin|-|enabled" || !strings.Contains(stderr, "not listed") {
			t.Errorf("user erin printed %q, stderr %q", out, stderr)
		}
		// The store has them.
		s, err := tokenstore.OpenFile(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if d, err := s.LookupUser(context.Background(), "dave"); err != nil || d == nil || !d.Disabled {
			t.Errorf("dave in the store: %+v, %v", d, err)
		}
	})

	t.Run("errors", func(t *testing.T) {
		tests := []struct {
			args []string
			want string
		}{
			{cmd("revoke", "nope"), "api-token revoke: unknown token nope"},
			{cmd("revoke"), "name the token to revoke"},
			{cmd("revoke", alice.ID, "--user", "alice"), "not both"},
			{cmd("revoke", "--user", "nobody"), `unknown user "nobody"`},
			{cmd("rotate", "nope"), "api-token rotate: unknown token nope"},
			{cmd("rotate"), "accepts 1 arg"},
			{cmd("rotate", alice.ID, "--grace", "-1h"), "--grace"},
			{cmd("rotate", alice.ID, "--expires", "later"), "--expires"},
			{cmd("list", "--status", "sleeping"), "--status"},
			{cmd("user", "alice", "--disable", "--enable"), "--disable and --enable"},
			{cmd("user", "--disable"), "name the user"},
			{cmd("user", "bad\x01name", "--disable"), "user name"},
			{cmd("user", "alice", "--groups", "a,b\tc"), "groups"},
			{cmd("unlock", "--user", "alice"), "lockouts live in the running server"},
			{cmd("unlock"), "give --user, --ip"},
			{cmd("unlock", "--ip", "1.2.3"), "--ip"},
		}
		for _, tc := range tests {
			stdout, _, err := run(t, "", tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%q: err = %v, want it to contain %q", tc.args, err, tc.want)
			}
			if stdout != "" {
				t.Errorf("%q: printed %q on failure", tc.args, stdout)
			}
		}
	})
}

// must returns the first of two values.
func must[T, U any](v T, _ U) T { return v }

func TestHash(t *testing.T) {
	const secret = "cat_0123456789abcdefghijABCDEFGHIJ01xyzXYZ"
	stdout, _, err := run(t, secret+"\n", "hash")
	if err != nil {
		t.Fatal(err)
	}
	if want := tokenstore.HashSecret(secret) + "\n"; stdout != want {
		t.Errorf("hash printed %q, want %q", stdout, want)
	}
	if _, _, err := run(t, "\n", "hash"); err == nil {
		t.Error("hash of empty input succeeded")
	}
}

// TestCLIThroughAdminAPI runs the commands against the admin API of the
// in-process Caddy that startAPI loads (realm corp, max_lifetime 30d).
// Not parallel: the package's tests share that one Caddy.
func TestCLIThroughAdminAPI(t *testing.T) {
	f := startAPI(t)
	api := func(args ...string) []string { return append(args, "--address", adminAddr, "--realm", "corp") }

	out, stderr := mustRun(t, api("create", "--user", "cli-alice", "--name", "laptop", "--expires", "7d")...)
	first := secretOf(t, out)
	if !strings.Contains(stderr, "realm corp at "+adminAddr) {
		t.Errorf("create stderr %q", stderr)
	}
	if status, body := f.site("GET", bearer(first), nil); status != 200 || body != "hello cli-alice" {
		t.Fatalf("the new token: %d %s", status, body)
	}

	var tokens []TokenView
	decodeJSON(t, must(mustRun(t, api("list", "--user", "cli-alice", "--json")...)), &tokens)
	if len(tokens) != 1 || tokens[0].Name != "laptop" {
		t.Fatalf("list --json: %+v", tokens)
	}
	firstID := tokens[0].ID
	out, _ = mustRun(t, api("list", "--user", "cli-alice")...)
	if rows := tableRows(out); len(rows) != 2 || rows[1][0] != firstID || rows[1][4] != "active" {
		t.Errorf("list printed:\n%s", out)
	}

	t.Run("rotate with grace, then revoke", func(t *testing.T) {
		out, stderr := mustRun(t, api("rotate", firstID, "--grace", "1h")...)
		second := secretOf(t, out)
		if !strings.Contains(stderr, "keeps working until") {
			t.Errorf("rotate stderr %q", stderr)
		}
		for _, s := range []string{first, second} {
			if status, body := f.site("GET", bearer(s), nil); status != 200 {
				t.Errorf("during the grace period: %d %s", status, body)
			}
		}
		decodeJSON(t, must(mustRun(t, api("list", "--user", "cli-alice", "--status", "active", "--json")...)), &tokens)
		if len(tokens) != 2 || tokens[1].ID == firstID {
			t.Fatalf("after rotate: %+v", tokens)
		}
		secondID := tokens[1].ID
		if _, stderr := mustRun(t, api("revoke", secondID)...); !strings.Contains(stderr, "Revoked token "+secondID) {
			t.Errorf("revoke stderr %q", stderr)
		}
		if status, _ := f.site("GET", bearer(second), nil); status != 401 {
			t.Errorf("revoked token answered %d, want 401 at once", status)
		}
		if status, _ := f.site("GET", bearer(first), nil); status != 200 {
			t.Errorf("the old token in its grace period: %d", status)
		}
	})

	t.Run("user", func(t *testing.T) {
		var u UserView
		decodeJSON(t, must(mustRun(t, api("user", "cli-alice", "--groups", "staff", "--disable", "--json")...)), &u)
		if !u.Disabled || strings.Join(u.Groups, ",") != "staff" {
			t.Errorf("user --disable: %+v", u)
		}
		if status, _ := f.site("GET", bearer(first), nil); status != 403 {
			t.Errorf("disabled user: %d, want 403", status)
		}
		out, _ := mustRun(t, api("user", "cli-alice", "--enable")...)
		if rows := tableRows(out); len(rows) != 2 || strings.Join(rows[1], "|") != "cli-alice|staff|enabled" {
			t.Errorf("user --enable printed:\n%s", out)
		}
		if status, _ := f.site("GET", bearer(first), nil); status != 200 {
			t.Errorf("re-enabled user: %d", status)
		}
	})

	t.Run("unlock", func(t *testing.T) {
		from := map[string]string{"X-Forwarded-For": "198.51.100.7"}
		for range 5 {
			f.site("GET", basic("cli-alice", "wrong"), from)
		}
		banned := map[string]string{"X-Forwarded-For": "198.51.100.8"}
		for range 20 {
			f.site("GET", bearer("cat_wrong"), banned)
		}
		if status, _ := f.site("GET", basic("cli-alice", first), from); status != 403 {
			t.Fatalf("no CAPTCHA challenge: %d", status)
		}
		if status, _ := f.site("GET", bearer(first), banned); status != 429 {
			t.Fatalf("no ban: %d", status)
		}
		out, _ := mustRun(t, api("unlock", "--list")...)
		if !regexp.MustCompile(`(?m)^cli-alice +198\.51\.100\.7 `).MatchString(out) || !regexp.MustCompile(`(?m)^198\.51\.100\.8 `).MatchString(out) {
			t.Errorf("unlock --list printed:\n%s", out)
		}
		_, stderr := mustRun(t, api("unlock", "--user", "cli-alice")...)
		if !strings.Contains(stderr, "1 CAPTCHA challenge(s) of user cli-alice") {
			t.Errorf("unlock --user stderr %q", stderr)
		}
		if status, body := f.site("GET", basic("cli-alice", first), from); status != 200 {
			t.Errorf("after unlock --user: %d %s", status, body)
		}
		_, stderr = mustRun(t, api("unlock", "--ip", "198.51.100.8")...)
		if !strings.Contains(stderr, "Lifted the ban of IP address 198.51.100.8") {
			t.Errorf("unlock --ip stderr %q", stderr)
		}
		if status, _ := f.site("GET", bearer(first), banned); status != 200 {
			t.Errorf("after unlock --ip: %d", status)
		}
	})

	t.Run("revoke all of a user's tokens", func(t *testing.T) {
		out, _ := mustRun(t, api("revoke", "--user", "cli-alice", "--json")...)
		var answer struct{ Revoked int }
		decodeJSON(t, out, &answer)
		if answer.Revoked != 1 {
			t.Errorf("revoke --user: %s", out)
		}
		if status, _ := f.site("GET", bearer(first), nil); status != 401 {
			t.Errorf("after revoking all: %d", status)
		}
	})

	t.Run("a name with a slash is one path segment", func(t *testing.T) {
		const name = "team/ci bot%"
		secret := secretOf(t, must(mustRun(t, api("create", "--user", name)...)))
		out, _ := mustRun(t, api("user", name, "--groups", "ops")...)
		if rows := tableRows(out); len(rows) != 2 || strings.Join(rows[1], "|") != name+"|ops|enabled" {
			t.Errorf("user printed:\n%s", out)
		}
		if status, body := f.site("GET", bearer(secret), nil); status != 200 || body != "hello "+name {
			t.Errorf("the token: %d %s", status, body)
		}
		mustRun(t, api("unlock", "--user", name)...)
		var answer struct{ Revoked int }
		decodeJSON(t, must(mustRun(t, api("revoke", "--user", name, "--json")...)), &answer)
		if answer.Revoked != 1 {
			t.Errorf("revoke --user %q revoked %d", name, answer.Revoked)
		}
		if status, _ := f.site("GET", bearer(secret), nil); status != 401 {
			t.Errorf("after revoking: %d", status)
		}
	})

	t.Run("errors carry the API's message and status", func(t *testing.T) {
		closed := func() string {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			return l.Addr().String()
		}()
		tests := []struct {
			args []string
			want string
		}{
			{api("revoke", "nope"), "api-token revoke: unknown token nope (404)"},
			{api("rotate", "nope"), "api-token rotate: unknown token nope (404)"},
			{api("revoke", "--user", "nobody"), `unknown user "nobody" (404)`},
			{api("create", "--user", "x", "--expires", "90d"), "beyond max_lifetime"},
			{api("create", "--user", "x", "--hash", "md5:abc"), "hash"},
			{api("user", "bad\x01name", "--disable"), "user name"},
			{api("unlock", "--ip", "not-an-ip"), "--ip"},
			{api("revoke", ".."), `".." cannot be named in an admin API path`},
			{[]string{"list", "--address", adminAddr, "--realm", "nope"}, `unknown realm "nope" (404); --realm names the realm of an api_token_auth handler; the server has corp`},
			{[]string{"list", "--address", adminAddr}, `unknown realm "default"`},
			{[]string{"list", "--address", closed}, "reaching Caddy's admin API at " + closed},
		}
		for _, tc := range tests {
			stdout, _, err := run(t, "", tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%q: err = %v, want it to contain %q", tc.args, err, tc.want)
			}
			if stdout != "" {
				t.Errorf("%q: printed %q on failure", tc.args, stdout)
			}
		}
	})
}
