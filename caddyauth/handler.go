// Package caddyauth is the api_token_auth HTTP handler: it protects a site
// or API with personal API tokens kept in a token store, and answers the
// test endpoint that tells a client exactly why its credentials fail.
package caddyauth

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-apitoken/caddy-apitoken/captcha"
	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults of the handler's options.
const (
	DefaultRealm        = "default"
	DefaultTestEndpoint = "/rest/de.resolution.apitokenauth/latest/user/authTest"
	DefaultCacheTTL     = 30 * time.Second

	// testEndpointOff is the test_endpoint value that disables it.
	testEndpointOff = "off"

	// expiryWarning is how close to its expiry a token must be for
	// responses to carry X-Api-Token-Expires.
	expiryWarning = 14 * 24 * time.Hour
)

// Handler authenticates requests with personal API tokens, sent as
// `Authorization: Bearer <token>` or as the password of HTTP Basic
// authentication (`Authorization: Basic base64(<user>:<token>)`, where
// the username must own the token).
//
// A request that passes every check goes on to the next handler with the
// placeholders `{http.auth.user.id}` (the user), `{http.auth.user.token_id}`,
// `{http.auth.user.token_name}`, `{http.auth.user.scope}` and
// `{http.auth.user.groups}` (comma-separated) set. A request that fails is
// answered at once with `{"message": "<why>"}` as JSON: 401 (with
// `WWW-Authenticate` challenges for Basic and Bearer) when the credentials
// are missing or the token is unknown, revoked or expired; 403 when the
// token is valid but not allowed this request; 503 when the token store
// cannot be asked. It never passes a failed request on.
//
// Requests to the test endpoint run the same checks and are always
// answered 200 with a JSON verdict, never passed on.
type Handler struct {
	// The name of this realm, shown in WWW-Authenticate challenges; the
	// admin API and the CLI address the realm by it. Letters, digits, '.',
	// '_' and '-'. Default: "default".
	Realm string `json:"realm,omitempty"`

	// Where tokens and users are kept: {"type": "file", "path": …},
	// {"type": "sqlite", "path": …} or {"type": "postgres", "dsn": …}.
	// Placeholders such as {env.PG_DSN} are expanded at start. Required.
	Store tokenstore.Config `json:"store"`

	// The path of the test endpoint, which tells a client whether its
	// credentials work and why not. "off" disables it: the default path
	// then answers that the endpoint was disabled. Default:
	// "/rest/de.resolution.apitokenauth/latest/user/authTest".
	TestEndpoint string `json:"test_endpoint,omitempty"`

	// Only users in at least one of these groups may use tokens. Default:
	// every user, listed in the store or not.
	AllowGroups []string `json:"allow_groups,omitempty"`

	// Client IP addresses or CIDR ranges from which tokens may be used.
	// The client IP is Caddy's, which honours the server's trusted_proxies.
	// Default: any address.
	AllowIPs []string `json:"allow_ips,omitempty"`

	// What to do with a request that has no Authorization header: "deny"
	// answers 401; "allow" passes it on unauthenticated, with no user
	// placeholders set. A request whose header is present but fails a
	// check is refused either way. Default: "deny".
	Anonymous string `json:"anonymous,omitempty"`

	// Keep the Authorization header when passing the request on. Default:
	// it is removed, so that the next handler (often a reverse proxy)
	// never sees the token.
	KeepAuthorization bool `json:"keep_authorization,omitempty"`

	// Cookies that the test endpoint expires in every answer, so that a
	// test never leaves a session behind (e.g. JSESSIONID). Default: none.
	SessionCookies []string `json:"session_cookies,omitempty"`

	// Send the headers that Atlassian clients read (X-Seraph-LoginReason,
	// X-AUSERNAME, X-Authentication-Denied-Reason). Default: true.
	AtlassianHeaders *bool `json:"atlassian_headers,omitempty"`

	// The prefix of generated tokens. A presented token with this prefix
	// and a wrong checksum is refused without a store look-up. Default:
	// "cat_".
	TokenPrefix string `json:"token_prefix,omitempty"`

	// The longest lifetime a new token may have: a token created without
	// an expiry gets now + max_lifetime, and one asked for beyond it is
	// refused. Default: no limit.
	MaxLifetime caddy.Duration `json:"max_lifetime,omitempty"`

	// How long a server may trust a cached token look-up from a shared
	// (SQL) store. The file store always answers from memory. Default: 30s.
	CacheTTL caddy.Duration `json:"cache_ttl,omitempty"`

	// Failure counting, CAPTCHA challenges, IP bans and the unlock page.
	// On by default, with the defaults of each option; see captcha.Config.
	Lockout *captcha.Config `json:"lockout,omitempty"`

	store        tokenstore.Store
	storeConfig  tokenstore.Config // as acquired, placeholders expanded
	lockout      *captcha.Lockout
	unlock       *captcha.UnlockPage
	unlockPath   string
	realmHeld    bool   // captcha.Acquire succeeded; Cleanup releases it
	registered   bool   // in the realm registry; Cleanup removes it
	registration *Realm // what register put there
	metrics      *realmMetrics
	slow         *tokenstore.SlowVerifier
	allowIPs     []netip.Prefix
	testPath     string
	testEnabled  bool // false when test_endpoint is "off"
	atlassian    bool
	// wwwAuthenticate and failureBodies are the parts of failure answers
	// that depend only on the config, made once: a flood of bad tokens
	// is answered without building them again for each request.
	wwwAuthenticate []string
	failureBodies   [len(outcomes)][]byte
	logger          *zap.Logger
	now             func() time.Time
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.api_token_auth",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults and opens (or shares) the token store.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.now = time.Now
	if h.Realm == "" {
		h.Realm = DefaultRealm
	}
	if h.TokenPrefix == "" {
		h.TokenPrefix = tokenstore.DefaultPrefix
	}
	if h.Anonymous == "" {
		h.Anonymous = anonymousDeny
	}
	if h.CacheTTL == 0 {
		h.CacheTTL = caddy.Duration(DefaultCacheTTL)
	}
	h.atlassian = h.AtlassianHeaders == nil || *h.AtlassianHeaders
	h.wwwAuthenticate = []string{`Basic realm="` + h.Realm + `"`, `Bearer realm="` + h.Realm + `"`}
	for o := range outcomes {
		// The details that name an address, a header or a method are
		// encoded per request.
		h.failureBodies[o] = messageBody(verdict{outcome: outcome(o)}.detail())
	}
	switch h.TestEndpoint {
	case "":
		h.testPath, h.testEnabled = DefaultTestEndpoint, true
	case testEndpointOff:
		h.testPath, h.testEnabled = DefaultTestEndpoint, false
	default:
		h.testPath, h.testEnabled = h.TestEndpoint, true
	}

	var err error
	if h.allowIPs, err = tokenstore.ParsePrefixes(h.AllowIPs); err != nil {
		return fmt.Errorf("allow_ips: %v", err)
	}
	if err := h.Validate(); err != nil {
		return err
	}

	h.storeConfig = h.Store.Expand(caddy.NewReplacer())
	// SQL stores keep many realms in one database; the realm picks the rows.
	h.storeConfig.Realm = h.Realm
	// SQL stores cache look-ups for cache_ttl (the file store ignores it).
	h.storeConfig.CacheTTL = time.Duration(h.CacheTTL)
	store, err := tokenstore.Acquire(h.storeConfig, h.logger.Named("store"))
	if err != nil {
		return fmt.Errorf("store %s: %v", h.storeConfig, err)
	}
	h.store = store
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	h.metrics = newRealmMetrics(h.Realm, store.Kind())
	h.slow = &tokenstore.SlowVerifier{Observe: func(hit bool) {
		if hit {
			h.metrics.slowHashHit.Inc()
		} else {
			h.metrics.slowHashMiss.Inc()
		}
	}}

	lockout := h.Lockout.Settings()
	lockout.Captcha.Secret = caddy.NewReplacer().ReplaceKnown(lockout.Captcha.Secret, "")
	// SQL stores keep the lockout state in their database, so that servers
	// sharing it share lockouts; the file store's is kept in Caddy's storage.
	lockoutStore, _ := store.(tokenstore.LockoutStore)
	realm, err := captcha.Acquire(h.Realm, h, lockout, ctx.Storage(), lockoutStore, h.logger.Named("lockout"))
	if err != nil {
		return fmt.Errorf("lockout: %v", err)
	}
	h.realmHeld = true
	h.lockout = realm.Lockout
	h.unlockPath = lockout.UnlockPath
	h.unlock = captcha.NewUnlockPage(lockout, realm.Puzzles, realm.Lockout, h.checkOwnedToken, h.logger.Named("unlock"))
	h.register()
	h.registered = true
	return nil
}

// Anonymous values.
const (
	anonymousDeny  = "deny"
	anonymousAllow = "allow"
)

// Validate checks the configuration; every message names the option and
// the offending value. The Caddyfile parser runs the same checks, option
// by option, so that its errors also carry the line.
func (h *Handler) Validate() error {
	checks := []error{
		checkRealm(h.Realm),
		h.Store.Validate(),
		checkTestEndpoint(h.TestEndpoint),
		checkAnonymous(h.Anonymous),
		checkSessionCookies(h.SessionCookies),
		checkTokenPrefix(h.TokenPrefix),
		checkNotNegative("max_lifetime", h.MaxLifetime),
		checkNotNegative("cache_ttl", h.CacheTTL),
		h.Lockout.Validate(),
		checkAllowGroups(h.AllowGroups),
	}
	if _, err := tokenstore.ParsePrefixes(h.AllowIPs); err != nil {
		checks = append(checks, fmt.Errorf("allow_ips: %v", err))
	}
	for _, err := range checks {
		if err != nil {
			return err
		}
	}
	return nil
}

var realmPattern = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

func checkRealm(realm string) error {
	if !realmPattern.MatchString(realm) {
		return fmt.Errorf("realm %q: only letters, digits, '.', '_' and '-' are allowed", realm)
	}
	return nil
}

func checkAllowGroups(groups []string) error {
	for _, g := range groups {
		if g == "" {
			return fmt.Errorf("allow_groups: empty group name")
		}
	}
	return nil
}

func checkTestEndpoint(path string) error {
	if path != "" && path != testEndpointOff && !strings.HasPrefix(path, "/") {
		return fmt.Errorf("test_endpoint %q: must be a path starting with / or 'off'", path)
	}
	return nil
}

func checkAnonymous(mode string) error {
	switch mode {
	case "", anonymousDeny, anonymousAllow:
		return nil
	}
	return fmt.Errorf("anonymous %q: must be 'deny' or 'allow'", mode)
}

// cookieNamePattern is RFC 6265's token: no separators, spaces or controls.
var cookieNamePattern = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

func checkSessionCookies(names []string) error {
	for _, name := range names {
		if !cookieNamePattern.MatchString(name) {
			return fmt.Errorf("session_cookies %q: not a valid cookie name", name)
		}
	}
	return nil
}

func checkTokenPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := tokenstore.ValidatePrefix(prefix); err != nil {
		return fmt.Errorf("token_prefix %v", err)
	}
	return nil
}

func checkNotNegative(option string, d caddy.Duration) error {
	if d < 0 {
		return fmt.Errorf("%s %s: must not be negative", option, time.Duration(d))
	}
	return nil
}

// Cleanup gives back the store and the realm's lockout state; the last
// config using them closes them.
func (h *Handler) Cleanup() error {
	var errs []error
	if h.registered {
		errs = append(errs, h.unregister())
	}
	if h.realmHeld {
		errs = append(errs, captcha.Release(h.Realm, h))
	}
	if h.store != nil {
		errs = append(errs, tokenstore.Release(h.storeConfig))
	}
	return errors.Join(errs...)
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.URL.Path == h.testPath {
		return h.serveTestEndpoint(w, r)
	}
	if strings.HasPrefix(r.URL.Path, h.unlockPath) && h.unlock.ServeHTTP(w, r, clientIP(r)) {
		return nil
	}
	if h.Anonymous == anonymousAllow && len(r.Header.Values("Authorization")) == 0 {
		return next.ServeHTTP(w, r)
	}
	ip := clientIP(r)
	v := h.authenticate(r, ip)
	if v.outcome != authenticated {
		h.noteFailure(r, v, ip)
		h.writeFailure(w, r, v)
		return nil
	}
	h.noteSuccess(w, r, v, ip)
	if !h.KeepAuthorization {
		r.Header.Del("Authorization")
	}
	return next.ServeHTTP(w, r)
}

// noteSuccess does what every successful authentication does, on a
// protected route or the test endpoint: it records the use (batched by the
// store), sets the user placeholders and the success headers.
func (h *Handler) noteSuccess(w http.ResponseWriter, r *http.Request, v verdict, ip netip.Addr) {
	t, now := v.token, v.at
	h.store.RecordUse(t.ID, now, ip)

	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	repl.Map(userPlaceholders(t, v.user))

	hdr := w.Header()
	if h.atlassian {
		// Both values share one allocation; each slice is capped, so an
		// append to one header's values cannot write into the other's.
		values := []string{outcomes[authenticated].seraph, t.User}
		hdr[headerSeraphLoginReason] = values[0:1:1]
		hdr[headerAUsername] = values[1:2:2]
	}
	if t.Expires != nil && t.Expires.Sub(now) <= expiryWarning {
		hdr.Set(headerAPITokenExpires, t.Expires.UTC().Format(time.RFC3339))
	}
	if c := h.logger.Check(zapcore.DebugLevel, "authenticated"); c != nil {
		c.Write(zap.String("realm", h.Realm), zap.String("user", t.User),
			zap.String("token_id", t.ID), zap.String("client_ip", ip.String()))
	}
}

// userPlaceholders answers the {http.auth.user.*} placeholders of an
// authenticated request when something asks for them. Most requests never
// do; setting all five up front would box five values into the replacer's
// map on every request.
func userPlaceholders(t *tokenstore.Token, user *tokenstore.User) caddy.ReplacerFunc {
	return func(key string) (any, bool) {
		name, ok := strings.CutPrefix(key, "http.auth.user.")
		if !ok {
			return nil, false
		}
		switch name {
		case "id":
			return t.User, true
		case "token_id":
			return t.ID, true
		case "token_name":
			return t.Name, true
		case "scope":
			return string(t.Scope), true
		case "groups":
			if user == nil {
				return "", true
			}
			return user.JoinedGroups(), true
		}
		return nil, false
	}
}

// noteFailure is the one place a failed attempt is accounted for: one INFO
// line per failure (fail2ban-friendly), never with the secret. A request
// that carried no Authorization header at all is not an attempt (browsers
// send one first to get the challenge): it is logged at DEBUG. Lockout
// counting joins it here.
func (h *Handler) noteFailure(r *http.Request, v verdict, ip netip.Addr) {
	level := zapcore.InfoLevel
	if v.outcome == noCredentials && len(r.Header.Values("Authorization")) == 0 {
		level = zapcore.DebugLevel
	}
	c := h.logger.Check(level, "authentication failed")
	if c == nil {
		return
	}
	// The path, not the URI: a query string may carry anything, secrets
	// included.
	fields := []zap.Field{
		zap.String("realm", h.Realm),
		zap.String("reason", v.outcome.info().code),
		zap.String("client_ip", ip.String()),
		zap.String("method", r.Method),
		zap.String("path", r.URL.Path),
	}
	if user := v.username; user != "" || v.token != nil {
		if v.token != nil {
			user = v.token.User
		}
		fields = append(fields, zap.String("user", user))
	}
	if v.token != nil {
		fields = append(fields, zap.String("token_id", v.token.ID))
	}
	c.Write(fields...)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
