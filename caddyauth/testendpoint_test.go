package caddyauth

import (
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

func TestTestEndpoint(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	f := newFixture(t, now)
	h := provision(t, f, now, func(h *Handler) { h.SessionCookies = []string{"JSESSIONID", "seraph.rememberme.cookie"} })
	s := f.secrets

	const (
		success      = `{"isSuccessfulAuthentication":true}`
		failurePre   = `{"isSuccessfulAuthentication":false,"authenticationFailureDetails":"`
		wantCookies1 = "JSESSIONID=; Path=/; Max-Age=0"
		wantCookies2 = "seraph.rememberme.cookie=; Path=/; Max-Age=0"
	)
	tests := []struct {
		name   string
		req    request
		body   string
		seraph string
	}{
		{"success GET", request{authz: basicAuth("alice", s[tokRW])}, success, "OK"},
		{"success PUT", request{authz: "Bearer " + s[tokRW], method: http.MethodPut}, success, "OK"},
		{"success POST", request{authz: "Bearer " + s[tokRW], method: http.MethodPost}, success, "OK"},
		{"any method", request{authz: "Bearer " + s[tokRW], method: http.MethodDelete}, success, "OK"},
		{"no credentials", request{}, failurePre + `No valid bearer- or basic auth header present"}`, "AUTHENTICATED_FAILED"},
		{"bad token", request{authz: basicAuth("alice", "wrong")}, failurePre + `Token is invalid, has been revoked or expired"}`, "AUTHENTICATED_FAILED"},
		{"disabled user", request{authz: "Bearer " + s[tokBob]}, failurePre + `You are not permitted to use API tokens"}`, "AUTHORISATION_FAILED"},
		{"ip", request{authz: "Bearer " + s[tokIPLimited]}, failurePre + `IP address 127.0.0.1 not permitted"}`, "AUTHORISATION_FAILED"},
		{"header", request{authz: "Bearer " + s[tokHeaders]}, failurePre + `Required request header X-Env is missing or has the wrong value"}`, "AUTHORISATION_FAILED"},
		{"scope of its own method", request{authz: "Bearer " + s[tokRO], method: http.MethodPost}, failurePre + `The token scope is read-only and only covers GET, HEAD and OPTIONS requests. Request method type was POST."}`, "AUTHORISATION_FAILED"},
		{"read-only GET", request{authz: "Bearer " + s[tokRO]}, success, "OK"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.path = DefaultTestEndpoint
			res := serve(t, h, tc.req)
			if res.nextCalled {
				t.Fatal("the test endpoint passed the request on")
			}
			if res.rec.Code != 200 {
				t.Fatalf("status %d, want 200", res.rec.Code)
			}
			if got := res.rec.Body.String(); got != tc.body {
				t.Errorf("body = %s\nwant   %s", got, tc.body)
			}
			hdr := res.rec.Header()
			if hdr.Get("Content-Type") != "application/json" || hdr.Get("Cache-Control") != "no-store" {
				t.Errorf("Content-Type %q, Cache-Control %q", hdr.Get("Content-Type"), hdr.Get("Cache-Control"))
			}
			if got := strings.Join(hdr.Values("Set-Cookie"), "|"); got != wantCookies1+"|"+wantCookies2 {
				t.Errorf("Set-Cookie = %q", got)
			}
			if got := hdr[headerSeraphLoginReason]; len(got) != 1 || got[0] != tc.seraph {
				t.Errorf("%s = %q, want %q", headerSeraphLoginReason, got, tc.seraph)
			}
			if v := hdr.Values("WWW-Authenticate"); len(v) != 0 {
				t.Errorf("WWW-Authenticate on the test endpoint: %q", v)
			}
		})
	}
}

func TestTestEndpointDisabled(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	const disabled = `{"testEndpointUnavailable":"The test endpoint has been disabled by an administrator"}`

	t.Run("by config", func(t *testing.T) {
		f := newFixture(t, now)
		h := provision(t, f, now, func(h *Handler) { h.TestEndpoint = testEndpointOff })
		res := serve(t, h, request{path: DefaultTestEndpoint, authz: "Bearer " + f.secrets[tokRW]})
		if res.rec.Code != 200 || res.rec.Body.String() != disabled || res.nextCalled {
			t.Errorf("got %d %s (passed on: %v)", res.rec.Code, res.rec.Body, res.nextCalled)
		}
	})

	t.Run("custom path", func(t *testing.T) {
		f := newFixture(t, now)
		h := provision(t, f, now, func(h *Handler) { h.TestEndpoint = "/whoami" })
		if res := serve(t, h, request{path: "/whoami", authz: "Bearer " + f.secrets[tokRW]}); res.rec.Body.String() != `{"isSuccessfulAuthentication":true}` {
			t.Errorf("custom test endpoint answered %s", res.rec.Body)
		}
		// The default path is then an ordinary protected path.
		if res := serve(t, h, request{path: DefaultTestEndpoint, authz: "Bearer " + f.secrets[tokRW]}); !res.nextCalled {
			t.Error("default test path still intercepted after moving the test endpoint")
		}
	})

	t.Run("by the store's setting", func(t *testing.T) {
		f := newFixture(t, now)
		data, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if err := json.Unmarshal(data, &doc); err != nil {
			t.Fatal(err)
		}
		doc["settings"] = map[string]any{"test_endpoint_enabled": false}
		f.write(t, doc)
		h := provision(t, f, now, nil)
		res := serve(t, h, request{path: DefaultTestEndpoint, authz: "Bearer " + f.secrets[tokRW]})
		if res.rec.Body.String() != disabled {
			t.Errorf("got %s", res.rec.Body)
		}
	})
}
