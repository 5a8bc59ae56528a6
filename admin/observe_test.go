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
// storedHash matches any stored token hash or bcrypt hash, known to the
// test or not; the words "sha256:" and "$2a$" alone appear in the help
// texts of error messages.
var storedHash = regexp.MustCompile(`sha256:[0-9a-f]{64}|\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}`)

func TestLogsAndMetrics(t *testing.T) {
	f := startAPIWith(t, "log {\n\t\toutput file DIR/caddy.log\n\t\tformat json\n\t\tlevel DEBUG\n\t}")
	logPath := filepath.Join(f.dir, "caddy.log")

	var secrets []string // everything that must never be logged
	addSecret := func(s string) { secrets = append(secrets, s) }
	// answers are the bodies of every answer but the two that hand out a
	// new secret: failures and error messages must not echo one either.
	var answers []string
	site := func(authz string, header map[string]string) int {
		status, body := f.site("GET", authz, header)
		answers = append(answers, body)
		return status
	}

	var tok TokenView
	f.admin("POST", "/api-token-auth/corp/tokens", `{"user":"alice","name":"ci"}`, &tok)
	addSecret(tok.Token)
	for _, authz := range []string{bearer(tok.Token), basic("alice", tok.Token)} {
		addSecret(authz)
		addSecret(strings.TrimPrefix(authz, "Basic "))
		if status := site(authz, nil); status != 200 {
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
		site(authz, attacker)
	}
	for i := 0; i < 20; i++ {
		site(bearer(wrong), map[string]string{"X-Forwarded-For": "203.0.113.78"})
	}
	site("Bearer ", nil)
	f.admin("DELETE", "/api-token-auth/corp/lockouts/users/alice", "", nil)
	f.admin("DELETE", "/api-token-auth/corp/lockouts/ips/203.0.113.78", "", nil)
	var rotated TokenView
	f.admin("POST", "/api-token-auth/corp/tokens/"+tok.ID+"/rotate", `{"grace":"1h"}`, &rotated)
	addSecret(rotated.Token)
	f.admin("DELETE", "/api-token-auth/corp/tokens/"+rotated.ID, "", nil)
	site(bearer(rotated.Token), nil) // revoked: a failure with a token id
	// An imported credential, by hash.
	hash, _ := bcrypt.GenerateFromPassword([]byte("legacy-password"), bcrypt.MinCost)
	addSecret("legacy-password")
	addSecret(string(hash))
	f.admin("POST", "/api-token-auth/corp/tokens", fmt.Sprintf(`{"user":"bob","hash":"bcrypt:%s"}`, hash), nil)
	site(basic("bob", "legacy-password"), nil)
	addSecret(strings.TrimPrefix(basic("bob", "legacy-password"), "Basic "))
	// Admin requests refused for their secret or hash: the error names the
	// field, never the value.
	for _, body := range []string{
		`{"user":"bob","hash":"bcrypt:` + string(hash[:len(hash)-3]) + `"}`,
		`{"user":"bob","hash":"sha256:` + strings.Repeat("ab", 31) + `"}`,
		`{"user":"bob","hash":"` + string(hash) + `"}`,
		`{"user":"bob","token":"` + wrong + `"}`,
	} {
		status, answer := f.admin("POST", "/api-token-auth/corp/tokens", body, nil)
		if status != 400 {
			t.Errorf("POST tokens %s: status %d, want 400", body, status)
		}
		answers = append(answers, answer)
	}
	addSecret(string(hash[:len(hash)-3]))
	addSecret(strings.Repeat("ab", 31))
	for _, s := range []string{tok.Token, rotated.Token, wrong} {
		d := tokenstore.DigestOf(s)
		addSecret(hex.EncodeToString(d[:]))
	}

	t.Run("answers", func(t *testing.T) {
		for _, answer := range answers {
			for _, s := range secrets {
				if s != "" && strings.Contains(answer, s) {
					t.Errorf("an answer contains a secret, hash or Authorization value:\n%s", answer)
				}
			}
		}
	})

	t.Run("metrics", func(t *testing.T) {
		_, body := f.admin("GET", "/metrics", "", nil)
		for _, s := range secrets {
			if s != "" && strings.Contains(body, s) {
				t.Errorf("/metrics contains a secret, hash or Authorization value")
			}
		}
		for _, want := range []string{
			`caddy_api_token_auth_requests_total{realm="corp",result="ok"}`,
			`caddy_api_token_auth_requests_total{realm="corp",result="invalid_token"}`,
			`caddy_api_token_auth_requests_total{realm="corp",result="ip_banned"}`,
			`caddy_api_token_auth_active_challenges{realm="corp"} 0`,
			`caddy_api_token_auth_active_bans{realm="corp"} 0`,
			`caddy_api_token_auth_cache_lookups_total{cache="slow_hash",realm="corp",result="miss"}`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
		// The file store's look-ups are map reads, not timed (SQL stores'
		// are: see caddyauth's sqlstore_e2e_test.go).
		if strings.Contains(body, `store_operation_duration_seconds_count{operation="lookup_token",realm="corp"`) {
			t.Errorf("/metrics times the file store's look-ups")
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
		if storedHash.MatchString(line) || strings.Contains(line, "Authorization") {
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
