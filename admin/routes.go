package admin

import (
	"context"
	"net/http"
	"net/netip"
	"sort"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// TokenView is a token as the API shows it: its metadata, never its hash.
// Token carries the secret in the answer that created it, and only there.
type TokenView struct {
	ID              string            `json:"id"`
	User            string            `json:"user"`
	Name            string            `json:"name,omitempty"`
	Scope           tokenstore.Scope  `json:"scope"`
	Status          string            `json:"status"`
	Created         time.Time         `json:"created"`
	Expires         *time.Time        `json:"expires,omitempty"`
	Revoked         *time.Time        `json:"revoked,omitempty"`
	AllowedIPs      []string          `json:"allowed_ips,omitempty"`
	RequiredHeaders map[string]string `json:"required_headers,omitempty"`
	LastUsed        *time.Time        `json:"last_used,omitempty"`
	LastIPs         []string          `json:"last_ips,omitempty"`
	// BasicOnly marks a credential imported with a slow password hash:
	// it works with Basic authentication only.
	BasicOnly bool `json:"basic_only,omitempty"`
	// Token is the secret, shown once, when it is created.
	Token string `json:"token,omitempty"`
	// RotatedFrom is the token a rotation replaced, with its new expiry.
	RotatedFrom *TokenView `json:"rotated_from,omitempty"`
}

func viewOf(t tokenstore.Token, now time.Time) TokenView {
	return TokenView{
		ID:              t.ID,
		User:            t.User,
		Name:            t.Name,
		Scope:           t.Scope,
		Status:          t.Status(now),
		Created:         t.Created,
		Expires:         t.Expires,
		Revoked:         t.Revoked,
		AllowedIPs:      t.AllowedIPs,
		RequiredHeaders: t.RequiredHeaders,
		LastUsed:        t.LastUsed,
		LastIPs:         t.LastIPs,
		BasicOnly:       t.SlowHash(),
	}
}

// Token statuses for the status filter.
var statuses = map[string]bool{"active": true, "expired": true, "revoked": true}

func (a *API) listTokens(c *call) error {
	q := c.r.URL.Query()
	out, err := a.manager(c).list(c.r.Context(), q.Get("user"), q.Get("status"))
	if err != nil {
		return err
	}
	return writeJSON(c.w, http.StatusOK, out)
}

// list returns the tokens, filtered by user and status when not "".
func (m *manager) list(ctx context.Context, user, status string) ([]TokenView, error) {
	if status != "" && !statuses[status] {
		return nil, badRequest("status %q: want active, expired or revoked", status)
	}
	tokens, err := m.store.ListTokens(ctx)
	if err != nil {
		return nil, storeError(err, "token")
	}
	now := m.now()
	out := []TokenView{}
	for _, t := range tokens {
		v := viewOf(t, now)
		if (user == "" || t.User == user) && (status == "" || v.Status == status) {
			out = append(out, v)
		}
	}
	return out, nil
}

// expiryRequest is how a request asks for an expiry: a duration from now,
// or a time; at most one.
type expiryRequest struct {
	ExpiresIn string `json:"expires_in"`
	Expires   string `json:"expires"`
}

// parse returns the requested expiry, or nil for none asked.
func (e expiryRequest) parse(now time.Time) (*time.Time, error) {
	switch {
	case e.ExpiresIn != "" && e.Expires != "":
		return nil, badRequest("expires_in, expires: give one or the other")
	case e.ExpiresIn != "":
		d, err := caddy.ParseDuration(e.ExpiresIn)
		if err != nil || d <= 0 {
			return nil, badRequest("expires_in %q: want a positive duration such as 90d or 12h", e.ExpiresIn)
		}
		at := now.Add(d)
		return &at, nil
	case e.Expires != "":
		at, err := time.Parse(time.RFC3339, e.Expires)
		if err != nil {
			return nil, badRequest("expires %q: want an RFC 3339 time such as 2027-01-31T00:00:00Z", e.Expires)
		}
		return &at, nil
	}
	return nil, nil
}

type createRequest struct {
	User            string            `json:"user"`
	Name            string            `json:"name"`
	Scope           string            `json:"scope"`
	AllowedIPs      []string          `json:"allowed_ips"`
	RequiredHeaders map[string]string `json:"required_headers"`
	// Hash imports an existing credential instead of generating one.
	Hash string `json:"hash"`
	expiryRequest
}

func (a *API) createToken(c *call) error {
	var req createRequest
	if err := decodeBody(c.r, &req); err != nil {
		return err
	}
	view, err := a.manager(c).create(c.r.Context(), req)
	if err != nil {
		return err
	}
	return writeJSON(c.w, http.StatusCreated, view)
}

// create makes a token, or imports one by hash, and returns it with its
// secret (none for an import).
func (m *manager) create(ctx context.Context, req createRequest) (TokenView, error) {
	now := m.now()
	expires, err := req.parse(now)
	if err != nil {
		return TokenView{}, err
	}
	token, secret, err := tokenstore.NewToken(tokenstore.TokenRequest{
		User:            req.User,
		Name:            req.Name,
		Scope:           tokenstore.Scope(req.Scope),
		Expires:         expires,
		AllowedIPs:      req.AllowedIPs,
		RequiredHeaders: req.RequiredHeaders,
	}, m.prefix, now, m.maxLifetime)
	if err != nil {
		return TokenView{}, badRequest("%v", err)
	}
	if req.Hash != "" {
		token.Hash, secret = req.Hash, ""
		if err := token.Prepare(); err != nil {
			return TokenView{}, badRequest("hash: %v", err)
		}
	}
	if err := m.store.CreateToken(ctx, token); err != nil {
		return TokenView{}, storeError(err, "token")
	}
	m.logger.Info("token created", zap.String("realm", m.realm), zap.String("token_id", token.ID),
		zap.String("user", token.User), zap.Bool("imported", req.Hash != ""))
	view := viewOf(token, now)
	view.Token = secret
	return view, nil
}

func (a *API) getToken(c *call) error {
	t, err := a.manager(c).store.GetToken(c.r.Context(), c.args[0])
	if err != nil {
		return storeError(err, "token "+c.args[0])
	}
	return writeJSON(c.w, http.StatusOK, viewOf(t, a.now()))
}

func (a *API) revokeToken(c *call) error {
	view, err := a.manager(c).revoke(c.r.Context(), c.args[0])
	if err != nil {
		return err
	}
	return writeJSON(c.w, http.StatusOK, view)
}

// revoke marks token id revoked; it stays in the store.
func (m *manager) revoke(ctx context.Context, id string) (TokenView, error) {
	t, err := m.store.RevokeToken(ctx, id, m.now())
	if err != nil {
		return TokenView{}, storeError(err, "token "+id)
	}
	m.logger.Info("token revoked", zap.String("realm", m.realm), zap.String("token_id", t.ID), zap.String("user", t.User))
	return viewOf(t, m.now()), nil
}

type rotateRequest struct {
	// Grace is how long the old token keeps working. Default: 0, it
	// stops at once.
	Grace string `json:"grace"`
	expiryRequest
}

func (a *API) rotateToken(c *call) error {
	var req rotateRequest
	if c.r.ContentLength != 0 {
		if err := decodeBody(c.r, &req); err != nil {
			return err
		}
	}
	view, err := a.manager(c).rotate(c.r.Context(), c.args[0], req)
	if err != nil {
		return err
	}
	return writeJSON(c.w, http.StatusCreated, view)
}

// rotate makes a new token with the old one's user, name, scope, IPs and
// headers, and has the old one expire after the grace period.
func (m *manager) rotate(ctx context.Context, id string, req rotateRequest) (TokenView, error) {
	var grace time.Duration
	if req.Grace != "" {
		var err error
		if grace, err = caddy.ParseDuration(req.Grace); err != nil || grace < 0 {
			return TokenView{}, badRequest("grace %q: want a duration of 0 or more, such as 24h", req.Grace)
		}
	}
	now := m.now()
	old, err := m.store.GetToken(ctx, id)
	if err != nil {
		return TokenView{}, storeError(err, "token "+id)
	}
	if status := old.Status(now); status != "active" {
		return TokenView{}, badRequest("token %s is %s; only an active token can be rotated", old.ID, status)
	}
	expires, err := req.parse(now)
	if err != nil {
		return TokenView{}, err
	}
	if expires == nil && old.Expires != nil {
		// The new token lives as long as the old one was meant to.
		at := now.Add(old.Expires.Sub(old.Created))
		expires = &at
	}
	next, secret, err := tokenstore.NewToken(tokenstore.TokenRequest{
		User:            old.User,
		Name:            old.Name,
		Scope:           old.Scope,
		Expires:         expires,
		AllowedIPs:      old.AllowedIPs,
		RequiredHeaders: old.RequiredHeaders,
	}, m.prefix, now, m.maxLifetime)
	if err != nil {
		return TokenView{}, badRequest("%v", err)
	}
	old, err = m.store.RotateToken(ctx, old.ID, next, now.Add(grace))
	if err != nil {
		return TokenView{}, storeError(err, "token "+id)
	}
	m.logger.Info("token rotated", zap.String("realm", m.realm), zap.String("token_id", next.ID),
		zap.String("rotated_from", old.ID), zap.String("user", next.User), zap.Duration("grace", grace))
	view := viewOf(next, now)
	view.Token = secret
	oldView := viewOf(old, now)
	view.RotatedFrom = &oldView
	return view, nil
}

// UserView is a user as the API shows it.
type UserView struct {
	Name     string   `json:"name"`
	Groups   []string `json:"groups"`
	Disabled bool     `json:"disabled"`
}

func (a *API) listUsers(c *call) error {
	out, err := a.manager(c).users(c.r.Context())
	if err != nil {
		return err
	}
	return writeJSON(c.w, http.StatusOK, out)
}

// users lists the users, by name.
func (m *manager) users(ctx context.Context) ([]UserView, error) {
	users, err := m.store.ListUsers(ctx)
	if err != nil {
		return nil, storeError(err, "user")
	}
	out := make([]UserView, 0, len(users))
	for name, u := range users {
		out = append(out, userView(name, u))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func userView(name string, u tokenstore.User) UserView {
	groups := u.Groups
	if groups == nil {
		groups = []string{}
	}
	return UserView{Name: name, Groups: groups, Disabled: u.Disabled}
}

type userRequest struct {
	Groups   []string `json:"groups"`
	Disabled bool     `json:"disabled"`
}

func (a *API) putUser(c *call) error {
	var req userRequest
	if err := decodeBody(c.r, &req); err != nil {
		return err
	}
	view, err := a.manager(c).putUser(c.r.Context(), c.args[0], req)
	if err != nil {
		return err
	}
	return writeJSON(c.w, http.StatusOK, view)
}

// putUser sets a user's groups and disabled flag.
func (m *manager) putUser(ctx context.Context, name string, req userRequest) (UserView, error) {
	u := tokenstore.User{Groups: req.Groups, Disabled: req.Disabled}
	if err := tokenstore.ValidateUser(name, u); err != nil {
		return UserView{}, badRequest("%v", err)
	}
	if err := m.store.PutUser(ctx, name, u); err != nil {
		return UserView{}, storeError(err, "user")
	}
	m.logger.Info("user updated", zap.String("realm", m.realm), zap.String("user", name),
		zap.Strings("groups", req.Groups), zap.Bool("disabled", req.Disabled))
	return userView(name, u), nil
}

func (a *API) revokeUserTokens(c *call) error {
	user := c.args[0]
	n, err := a.manager(c).revokeUser(c.r.Context(), user)
	if err != nil {
		return err
	}
	return writeJSON(c.w, http.StatusOK, map[string]any{"user": user, "revoked": n})
}

// revokeUser revokes every token of user; an unknown user is a 404.
func (m *manager) revokeUser(ctx context.Context, user string) (int, error) {
	if known, err := m.userKnown(ctx, user); err != nil {
		return 0, err
	} else if !known {
		return 0, notFound("unknown user %q", user)
	}
	n, err := m.store.RevokeUserTokens(ctx, user, m.now())
	if err != nil {
		return 0, storeError(err, "user")
	}
	m.logger.Info("token revoked", zap.String("realm", m.realm), zap.String("user", user), zap.Int("tokens", n))
	return n, nil
}

// userKnown reports whether user is listed or owns a token.
func (m *manager) userKnown(ctx context.Context, user string) (bool, error) {
	users, err := m.store.ListUsers(ctx)
	if err != nil {
		return false, storeError(err, "user")
	}
	if _, ok := users[user]; ok {
		return true, nil
	}
	tokens, err := m.store.ListTokens(ctx)
	if err != nil {
		return false, storeError(err, "user")
	}
	for _, t := range tokens {
		if t.User == user {
			return true, nil
		}
	}
	return false, nil
}

func (a *API) listLockouts(c *call) error {
	return writeJSON(c.w, http.StatusOK, c.realm.Lockout.State())
}

// clearUserLockout answers 200 for any name: failed attempts may name
// users that exist nowhere, and their counts are worth clearing too.
func (a *API) clearUserLockout(c *call) error {
	user := c.args[0]
	n := c.realm.Lockout.ClearUser(user)
	return writeJSON(c.w, http.StatusOK, map[string]any{"user": user, "challenges_cleared": n})
}

func (a *API) clearIPLockout(c *call) error {
	ip, err := netip.ParseAddr(c.args[0])
	if err != nil {
		return badRequest("ip %q: not an IP address", c.args[0])
	}
	ip = ip.Unmap()
	cleared := c.realm.Lockout.ClearIP(ip)
	return writeJSON(c.w, http.StatusOK, map[string]any{"ip": ip.String(), "ban_cleared": cleared})
}

type settingsBody struct {
	TestEndpointEnabled *bool `json:"test_endpoint_enabled"`
}

func (a *API) getSettings(c *call) error {
	s, err := c.realm.Store.Settings(c.r.Context())
	if err != nil {
		return storeError(err, "settings")
	}
	on := s.TestEndpointOn()
	return writeJSON(c.w, http.StatusOK, settingsBody{TestEndpointEnabled: &on})
}

func (a *API) putSettings(c *call) error {
	var req settingsBody
	if err := decodeBody(c.r, &req); err != nil {
		return err
	}
	if req.TestEndpointEnabled == nil {
		return badRequest("test_endpoint_enabled: required (true or false)")
	}
	m := a.manager(c)
	if err := m.store.PutSettings(c.r.Context(), tokenstore.Settings{TestEndpointEnabled: req.TestEndpointEnabled}); err != nil {
		return storeError(err, "settings")
	}
	m.logger.Info("settings changed", zap.String("realm", m.realm), zap.Bool("test_endpoint_enabled", *req.TestEndpointEnabled))
	return writeJSON(c.w, http.StatusOK, req)
}

// manager carries out token management on one realm's store: for the
// admin API on a live realm, and for the CLI on a store it opened itself.
type manager struct {
	realm       string
	store       tokenstore.Store
	prefix      string
	maxLifetime time.Duration
	now         func() time.Time
	logger      *zap.Logger
}

// manager returns the manager of the call's live realm.
func (a *API) manager(c *call) *manager {
	return &manager{
		realm:       c.realm.Name,
		store:       c.realm.Store,
		prefix:      c.realm.TokenPrefix,
		maxLifetime: c.realm.MaxLifetime,
		now:         a.now,
		logger:      a.logger,
	}
}
