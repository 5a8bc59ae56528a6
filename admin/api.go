package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-apitoken/caddy-apitoken/caddyauth"
	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

func init() {
	caddy.RegisterModule(API{})
}

// APIPrefix is where the routes live on Caddy's admin server.
const APIPrefix = "/api-token-auth/"

// maxBody bounds a request body: token requests are small.
const maxBody = 64 << 10

// API adds token and lockout management to Caddy's admin API, under
// /api-token-auth/. Caddy builds it on every config load with no
// configuration; it finds the live realms in the handler's registry.
type API struct {
	logger *zap.Logger
	now    func() time.Time
}

// CaddyModule returns the Caddy module information.
func (API) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.api_token_auth",
		New: func() caddy.Module { return new(API) },
	}
}

// Provision sets up the logger.
func (a *API) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	// Times the API writes are kept to the second, as people read them.
	a.now = func() time.Time { return time.Now().UTC().Truncate(time.Second) }
	return nil
}

// Routes returns the one route under which all of ours are dispatched.
func (a *API) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: APIPrefix, Handler: caddy.AdminHandlerFunc(a.serveHTTP)}}
}

// apiError is an error answered with status and {"error": msg}.
func apiError(status int, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return caddy.APIError{HTTPStatus: status, Err: err}
}

func badRequest(format string, args ...any) error {
	return apiError(http.StatusBadRequest, format, args...)
}

func notFound(format string, args ...any) error {
	return apiError(http.StatusNotFound, format, args...)
}

// route is one method+path of the API. Path patterns are segments after
// the realm; "*" matches one segment.
type route struct {
	pattern string
	methods map[string]func(a *API, c *call) error
}

// call is one request, parsed.
type call struct {
	w     http.ResponseWriter
	r     *http.Request
	realm *caddyauth.Realm
	args  []string // the segments "*" matched
}

var routes = []route{
	{"tokens", map[string]func(*API, *call) error{"GET": (*API).listTokens, "POST": (*API).createToken}},
	{"tokens/*", map[string]func(*API, *call) error{"GET": (*API).getToken, "DELETE": (*API).revokeToken}},
	{"tokens/*/rotate", map[string]func(*API, *call) error{"POST": (*API).rotateToken}},
	{"users", map[string]func(*API, *call) error{"GET": (*API).listUsers}},
	{"users/*", map[string]func(*API, *call) error{"PUT": (*API).putUser}},
	{"users/*/tokens", map[string]func(*API, *call) error{"DELETE": (*API).revokeUserTokens}},
	{"lockouts", map[string]func(*API, *call) error{"GET": (*API).listLockouts}},
	{"lockouts/users/*", map[string]func(*API, *call) error{"DELETE": (*API).clearUserLockout}},
	{"lockouts/ips/*", map[string]func(*API, *call) error{"DELETE": (*API).clearIPLockout}},
	{"settings", map[string]func(*API, *call) error{"GET": (*API).getSettings, "PUT": (*API).putSettings}},
}

func (a *API) serveHTTP(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.EscapedPath(), strings.TrimSuffix(APIPrefix, "/"))
	rest = strings.Trim(rest, "/")
	if rest == "" {
		if r.Method != http.MethodGet {
			return methodNotAllowed(w, "GET")
		}
		return a.listRealms(w, r)
	}
	segments := strings.Split(rest, "/")
	for i, s := range segments {
		var err error
		if segments[i], err = url.PathUnescape(s); err != nil {
			return badRequest("path: %v", err)
		}
	}
	realm, ok := caddyauth.LookupRealm(segments[0])
	if !ok {
		return notFound("unknown realm %q", segments[0])
	}
	for _, rt := range routes {
		args, ok := match(rt.pattern, segments[1:])
		if !ok {
			continue
		}
		handle, ok := rt.methods[r.Method]
		if !ok {
			allowed := make([]string, 0, len(rt.methods))
			for m := range rt.methods {
				allowed = append(allowed, m)
			}
			sort.Strings(allowed)
			return methodNotAllowed(w, allowed...)
		}
		return handle(a, &call{w: w, r: r, realm: realm, args: args})
	}
	return notFound("no such route: %s", r.URL.Path)
}

// match matches path segments against a pattern and returns what its
// "*" segments matched.
func match(pattern string, segments []string) ([]string, bool) {
	parts := strings.Split(pattern, "/")
	if len(parts) != len(segments) {
		return nil, false
	}
	var args []string
	for i, p := range parts {
		switch {
		case p == "*" && segments[i] != "":
			args = append(args, segments[i])
		case p != segments[i]:
			return nil, false
		}
	}
	return args, true
}

func methodNotAllowed(w http.ResponseWriter, allowed ...string) error {
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	return apiError(http.StatusMethodNotAllowed, "method not allowed; use %s", strings.Join(allowed, " or "))
}

// writeJSON answers status with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// decodeBody reads a JSON body strictly: unknown fields and wrong types
// are errors that name the field.
func decodeBody(r *http.Request, v any) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return badRequest("reading body: %v", err)
	}
	if len(data) > maxBody {
		return badRequest("body larger than %d bytes", maxBody)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var typeErr *json.UnmarshalTypeError
		switch {
		case errors.As(err, &typeErr):
			return badRequest("%s: want a %s", typeErr.Field, typeErr.Type)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return badRequest("%s: not a field of this request", strings.TrimPrefix(err.Error(), "json: unknown field "))
		case errors.Is(err, io.EOF):
			return badRequest("body: a JSON object is required")
		}
		return badRequest("body: invalid JSON: %v", err)
	}
	// dec.More would miss a stray '}' or ']' after the object.
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("body: unexpected data after the JSON object")
	}
	return nil
}

// storeError maps a store error to an API error.
func storeError(err error, what string) error {
	switch {
	case errors.Is(err, tokenstore.ErrNotFound):
		return notFound("unknown %s", what)
	case errors.Is(err, tokenstore.ErrUnavailable):
		return apiError(http.StatusServiceUnavailable, "token store unavailable")
	}
	return apiError(http.StatusInternalServerError, "token store: %v", err)
}

// realmInfo is one realm in the realm listing.
type realmInfo struct {
	Name                string `json:"name"`
	Store               string `json:"store"`
	Tokens              int    `json:"tokens"`
	TestEndpointEnabled bool   `json:"test_endpoint_enabled"`
}

func (a *API) listRealms(w http.ResponseWriter, r *http.Request) error {
	out := []realmInfo{}
	for _, realm := range caddyauth.Realms() {
		ctx := r.Context()
		tokens, err := realm.Store.ListTokens(ctx)
		if err != nil {
			return storeError(err, "realm")
		}
		settings, err := realm.Store.Settings(ctx)
		if err != nil {
			return storeError(err, "realm")
		}
		out = append(out, realmInfo{
			Name:                realm.Name,
			Store:               realm.Store.Kind(),
			Tokens:              len(tokens),
			TestEndpointEnabled: realm.TestEndpointConfigured && settings.TestEndpointOn(),
		})
	}
	return writeJSON(w, http.StatusOK, out)
}

// Interface guards
var (
	_ caddy.Provisioner = (*API)(nil)
	_ caddy.AdminRouter = (*API)(nil)
)
