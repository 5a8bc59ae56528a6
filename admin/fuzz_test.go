package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// FuzzAdminBodies feeds arbitrary request bodies to decodeBody for every
// request type the admin API reads, and a decoded create request to the
// manager with a file store: no panic, only 400s for bad input, and what
// is accepted must leave a store file that still loads.
func FuzzAdminBodies(f *testing.F) {
	for _, seed := range []string{
		``,
		`{}`,
		`null`,
		`[]`,
		`{"user":"alice"}`,
		`{"user":"alice","name":"ci","scope":"read-only","expires_in":"90d","allowed_ips":["10.0.0.0/8","::1"],"required_headers":{"X-Env":"prod"}}`,
		`{"user":"alice","scope":"admin"}`,
		`{"user":"alice","expires":"2099-01-02T03:04:05Z"}`,
		`{"user":"alice","expires":"2000-01-02T03:04:05Z"}`,
		`{"user":"alice","expires_in":"1h","expires":"2099-01-01T00:00:00Z"}`,
		`{"user":"alice","expires_in":"-5m"}`,
		`{"user":"alice","expires_in":"99999999999d"}`,
		`{"user":"alice","hash":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}`,
		`{"user":"alice","hash":"bcrypt:$2a$14$ajq8Q7fbtFRQvXpdCq7Jcuy.Rx1h/L4J60Otx.gyNLbAYctGMJ9tK"}`,
		`{"user":"alice","required_headers":{"Bad Name":"x"}}`,
		`{"user":"alice","allowed_ips":["nope"]}`,
		`{"user":"alice"}}`,
		`{"user":"alice"} {}`,
		`{"user":1}`,
		`{"usr":"alice"}`,
		`{"grace":"1h"}`,
		`{"groups":["admins"],"disabled":true}`,
		`{"test_endpoint_enabled":false}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		decode := func(v any) error {
			r := httptest.NewRequest(http.MethodPost, APIPrefix+"fuzz", strings.NewReader(string(body)))
			err := decodeBody(r, v)
			if err != nil {
				checkBadRequest(t, body, err)
			} else if !json.Valid(body) {
				t.Fatalf("decodeBody accepted %q, which is not one JSON value", body)
			}
			return err
		}
		var rot rotateRequest
		decode(&rot)
		var user userRequest
		decode(&user)
		var settings settingsBody
		decode(&settings)
		var req createRequest
		if decode(&req) != nil {
			return
		}

		path := filepath.Join(t.TempDir(), "tokens.json")
		store, err := tokenstore.OpenFile(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
		m := &manager{
			realm:  "fuzz",
			store:  store,
			prefix: tokenstore.DefaultPrefix,
			now:    func() time.Time { return now },
			logger: zap.NewNop(),
		}
		view, err := m.create(context.Background(), req)
		if err != nil {
			checkBadRequest(t, body, err)
			return
		}
		if view.ID == "" {
			t.Fatalf("create(%q) returned a view without an id", body)
		}
		// The token was written: the file must still load, with it in.
		again, err := tokenstore.OpenFile(path, nil)
		if err != nil {
			t.Fatalf("create(%q) left a store file that does not load: %v", body, err)
		}
		defer again.Close()
		if _, err := again.GetToken(context.Background(), view.ID); err != nil {
			t.Fatalf("create(%q): token %s not in the store file: %v", body, view.ID, err)
		}
	})
}

// checkBadRequest fails unless err is a caddy.APIError with status 400.
func checkBadRequest(t *testing.T, body []byte, err error) {
	t.Helper()
	var apiErr caddy.APIError
	if !errors.As(err, &apiErr) || apiErr.HTTPStatus != http.StatusBadRequest {
		t.Fatalf("body %q: got %v (%T), want a 400 API error", body, err, err)
	}
}
