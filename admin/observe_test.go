package admin

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// TestLogsAndMetrics runs a full scenario through a real Caddy with its
// log at DEBUG in a file, then checks SPEC §10: the expected lines are
// there, and no secret, hash or Authorization value is in any line; and
// the metrics are at the admin /metrics endpoint, without user or IP
// labels.
func TestLogsAndMetrics(t *testing.T) {
	f := startAPIWith(t, "log {\n\t\toutput file DIR/caddy.log\n\t\tformat json\n\t\tlevel DEBUG\n\t}")
	logPath := filepath.Join(f.dir, "caddy.log")

	var secrets []string // everything that must never be logged
	addSecret := func(s string) { secrets = append(secrets, s) }

	var tok TokenView
	f.admin("POST", "/api-token-auth/corp/tokens", `{"user":"alice","name":"ci"}`, &tok)
	addSecret(tok.Token)
	for _, authz := range []string{bearer(tok.Token), basic("alice", tok.Token)} {
		addSecret(authz)
		addSecret(strings.TrimPrefix(authz, "Basic "))
		if status, _ := f.site("GET", authz, nil); status != 200 {
			t.Fatalf("success: %d", status)
		}
	}
	// Failures of every kind, a challenge and a ban, then resets.
	wrong := "cat_" + strings.Repeat("x", 38)
	addSecret(wrong)
	attacker := map[string]string{"X-Forwarded-For": "203.0.113.77"}
	for i := 0; i < 5; i++ {
		authz := basic("alice", wrong)
		addSecret(strings.TrimPrefix(authz, "Basic "))
		f.site("GET", authz, attacker)
	}
	for i := 0; i < 20; i++ {
		f.site("GET", bearer(wrong), map[string]string{"X-Forwarded-For": "203.0.113.78"})
	}
	f.site("GET", "Bearer ", nil)
	f.admin("DELETE", "/api-token-auth/corp/lockouts/users/alice", "", nil)
	f.admin("DELETE", "/api-token-auth/corp/lockouts/ips/203.0.113.78", "", nil)
	var rotated TokenView
	f.admin("POST", "/api-token-auth/corp/tokens/"+tok.ID+"/rotate", `{"grace":"1h"}`, &rotated)
	addSecret(rotated.Token)
	f.admin("DELETE", "/api-token-auth/corp/tokens/"+rotated.ID, "", nil)
	f.site("GET", bearer(rotated.Token), nil) // revoked: a failure with a token id
	// An imported credential, by hash.
	hash, _ := bcrypt.GenerateFromPassword([]byte("legacy-password"), bcrypt.MinCost)
	addSecret("legacy-password")
	addSecret(string(hash))
	f.admin("POST", "/api-token-auth/corp/tokens", fmt.Sprintf(`{"user":"bob","hash":"bcrypt:%s"}`, hash), nil)
	f.site("GET", basic("bob", "legacy-password"), nil)
	addSecret(strings.TrimPrefix(basic("bob", "legacy-password"), "Basic "))
	for _, s := range []string{tok.Token, rotated.Token, wrong} {
		d := tokenstore.DigestOf(s)
		addSecret(hex.EncodeToString(d[:]))
	}

	t.Run("metrics", func(t *testing.T) {
		_, body := f.admin("GET", "/metrics", "", nil)
		for _, want := range []string{
			`caddy_api_token_auth_requests_total{realm="corp",result="ok"}`,
			`caddy_api_token_auth_requests_total{realm="corp",result="invalid_token"}`,
			`caddy_api_token_auth_requests_total{realm="corp",result="ip_banned"}`,
			`caddy_api_token_auth_active_challenges{realm="corp"} 0`,
			`caddy_api_token_auth_active_bans{realm="corp"} 0`,
			`caddy_api_token_auth_store_operation_duration_seconds_count{operation="lookup_token",realm="corp",store="file"}`,
			`caddy_api_token_auth_cache_lookups_total{cache="slow_hash",realm="corp",result="miss"}`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
		labels := regexp.MustCompile(`caddy_api_token_auth_\w+\{([^}]*)\}`)
		for _, m := range labels.FindAllStringSubmatch(body, -1) {
			if strings.Contains(m[1], "user=") || strings.Contains(m[1], "ip=") || strings.Contains(m[1], "203.0.113") {
				t.Errorf("metric labels name a user or address: %s", m[0])
			}
		}
	})

	// The log file is written as lines are logged; read it all.
	file, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	data, err := io.ReadAll(file)
	if err != nil {
		t.Fatal(err)
	}
	messages := map[string]int{}
	scanner := bufio.NewScanner(strings.NewReader(string(data)))
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		line := scanner.Text()
		for _, s := range secrets {
			if s != "" && strings.Contains(line, s) {
				t.Errorf("a log line contains a secret, hash or Authorization value:\n%s", line)
			}
		}
		if strings.Contains(line, "sha256:") || strings.Contains(line, "$2a$") || strings.Contains(line, "Authorization") {
			t.Errorf("a log line contains a hash or an Authorization header:\n%s", line)
		}
		var entry map[string]any
		if json.Unmarshal([]byte(line), &entry) == nil {
			if msg, ok := entry["msg"].(string); ok {
				messages[msg+"/"+fmt.Sprint(entry["level"])]++
			}
		}
	}
	for _, want := range []string{
		"token created/info", "token rotated/info", "token revoked/info",
		"authentication failed/info", "authenticated/debug",
		"CAPTCHA challenge started/info", "CAPTCHA challenge cleared/info",
		"IP address banned/info", "IP address ban cleared/info",
	} {
		if messages[want] == 0 {
			t.Errorf("no %q line in the log", want)
		}
	}
	if t.Failed() {
		t.Logf("log messages: %v", messages)
	}
}
