package admin

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
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

func TestCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.json")
	stdout, stderr, err := run(t, "", "create", "--store", "file:"+path, "--user", "alice",
		"--name", "laptop", "--scope", "read-only", "--expires", "90d", "--ip", "10.0.0.0/8", "--ip", "192.0.2.1")
	if err != nil {
		t.Fatalf("create: %v (stderr %s)", err, stderr)
	}
	secret := strings.TrimSuffix(stdout, "\n")
	if strings.Contains(secret, "\n") || !tokenstore.PlausibleSecret(secret, "cat_") || !strings.HasPrefix(secret, "cat_") {
		t.Fatalf("stdout is not exactly one token: %q", stdout)
	}

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
		strings.Join(tok.AllowedIPs, ",") != "10.0.0.0/8,192.0.2.1" {
		t.Errorf("stored token %+v", tok)
	}
	if tok.Expires == nil || tok.Expires.Sub(time.Now()) < 89*24*time.Hour || tok.Expires.Sub(time.Now()) > 90*24*time.Hour {
		t.Errorf("expires = %v, want 90 days from now", tok.Expires)
	}
	if !strings.Contains(stderr, tok.ID) || strings.Contains(stderr, secret) {
		t.Errorf("stderr should name the token id and not repeat the secret: %q", stderr)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(secret)) {
		t.Error("the store file contains the secret")
	}
}

func TestCreateErrors(t *testing.T) {
	path := "file:" + filepath.Join(t.TempDir(), "tokens.json")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"create", "--user", "alice"}, "--store is required"},
		{[]string{"create", "--store", "mysql:x", "--user", "alice"}, `unknown type "mysql"`},
		{[]string{"create", "--store", path}, "--user is required"},
		{[]string{"create", "--store", path, "--user", "a", "--scope", "admin"}, "--scope"},
		{[]string{"create", "--store", path, "--user", "a", "--expires", "soon"}, "--expires"},
		{[]string{"create", "--store", path, "--user", "a", "--expires", "2001-01-01T00:00:00Z"}, "not in the future"},
		{[]string{"create", "--store", path, "--user", "a", "--ip", "10.0.0.0/40"}, "--ip"},
		{[]string{"create", "--store", path, "--user", "a", "--prefix", "a b"}, "--prefix"},
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
