package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"go.uber.org/zap"

	"github.com/caddy-apitoken/caddy-apitoken/captcha"
	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// backend carries out the `caddy api-token` commands: on the running
// server through its admin API (apiClient), or on a store the command
// opened itself (offlineStore), with the very code the API runs.
type backend interface {
	create(ctx context.Context, req createRequest) (TokenView, error)
	list(ctx context.Context, user, status string) ([]TokenView, error)
	revoke(ctx context.Context, id string) (TokenView, error)
	revokeUser(ctx context.Context, user string) (int, error)
	rotate(ctx context.Context, id string, req rotateRequest) (TokenView, error)
	users(ctx context.Context) ([]UserView, error)
	putUser(ctx context.Context, name string, req userRequest) (UserView, error)
	lockouts(ctx context.Context) (captcha.State, error)
	clearUserLockout(ctx context.Context, user string) (int, error)
	clearIPLockout(ctx context.Context, ip string) (bool, error)
	// where names the target in messages: the realm and admin address,
	// or the store.
	where() string
	close() error
}

// offlineStore works on a store directly, with no server running. Its
// token and user commands are the admin API's own manager.
type offlineStore struct {
	*manager
	cfg tokenstore.Config
}

// errNoServer is what the lockout commands answer offline.
var errNoServer = errors.New("lockouts live in the running server's memory and storage, not in the token store; " +
	"run this without --store, against the server's admin API (--address)")

// openOffline opens the store described by spec (file:<path>) for realm.
func openOffline(spec, realm, prefix string) (*offlineStore, error) {
	cfg, err := tokenstore.ParseSpec(spec)
	if err != nil {
		return nil, fmt.Errorf("--store: %v", err)
	}
	cfg.Realm = realm // SQL stores keep many realms in one database
	if err := tokenstore.ValidatePrefix(prefix); err != nil {
		return nil, fmt.Errorf("--prefix %v", err)
	}
	store, err := tokenstore.Open(cfg, nil)
	if err != nil {
		return nil, fmt.Errorf("--store: %v", err)
	}
	return &offlineStore{
		manager: &manager{
			realm:  realm,
			store:  store,
			prefix: prefix,
			// The realm's max_lifetime is in the server's config, which
			// the command does not read.
			maxLifetime: 0,
			now:         time.Now,
			// The command itself reports what it did.
			logger: zap.NewNop(),
		},
		cfg: cfg,
	}, nil
}

func (o *offlineStore) lockouts(context.Context) (captcha.State, error) {
	return captcha.State{}, errNoServer
}

func (o *offlineStore) clearUserLockout(context.Context, string) (int, error) {
	return 0, errNoServer
}

func (o *offlineStore) clearIPLockout(context.Context, string) (bool, error) {
	return false, errNoServer
}

func (o *offlineStore) where() string { return o.cfg.String() }

// close writes what is pending to the store.
func (o *offlineStore) close() error { return o.store.Close() }

// apiClient sends the commands to the admin API of a running server,
// with Caddy's own admin client (which also speaks to unix sockets).
type apiClient struct {
	address string // Caddy's admin listen address
	realm   string
}

// maxAnswer bounds an admin API answer that the command reads.
const maxAnswer = 64 << 20

// path is the admin API path of the realm's segments: each one escaped,
// so that a name with a "/" stays one segment. "." and ".." cannot be
// sent: HTTP servers resolve them as directories.
func (c *apiClient) path(segments ...string) (string, error) {
	var b strings.Builder
	b.WriteString(strings.TrimSuffix(APIPrefix, "/"))
	for _, s := range append([]string{c.realm}, segments...) {
		if s == "." || s == ".." {
			return "", fmt.Errorf("%q cannot be named in an admin API path; --store works on the store directly", s)
		}
		b.WriteString("/" + url.PathEscape(s))
	}
	return b.String(), nil
}

// do sends one request to the realm's segments (see path), with query
// parameters if any. With in not nil it is the JSON body; with out not nil
// the JSON answer is decoded into it.
func (c *apiClient) do(method string, segments []string, query url.Values, in, out any) error {
	uri, err := c.path(segments...)
	if err != nil {
		return err
	}
	if len(query) > 0 {
		uri += "?" + query.Encode()
	}
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	resp, err := caddycmd.AdminAPIRequest(c.address, method, uri, nil, body)
	if err != nil {
		return c.requestError(err)
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(out); err != nil {
		return fmt.Errorf("reading the answer of %s %s: %v", method, uri, err)
	}
	return nil
}

// answerError is an error answer of the admin API: its {"error": …}
// message and status, and what the command adds to help.
type answerError struct {
	status  int
	message string
	hint    string
}

func (e *answerError) Error() string {
	msg := fmt.Sprintf("%s (%d)", e.message, e.status)
	if e.hint != "" {
		msg += "; " + e.hint
	}
	return msg
}

// caddyAnswerError is how caddycmd.AdminAPIRequest reports an answer with
// status 400 or more (caddy/v2/cmd/commandfuncs.go); it keeps the body.
var caddyAnswerError = regexp.MustCompile(`(?s)^caddy responded with error: HTTP (\d{3}): (.*)$`)

// requestError turns what AdminAPIRequest returned into the API's own
// message, or explains that the server could not be reached.
func (c *apiClient) requestError(err error) error {
	m := caddyAnswerError.FindStringSubmatch(err.Error())
	if m == nil {
		return fmt.Errorf("reaching Caddy's admin API at %s: %v (is Caddy running with this admin address? "+
			"--address sets it; --store works on a store with no server)", c.address, err)
	}
	status, _ := strconv.Atoi(m[1])
	var answer struct {
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(m[2]), &answer) != nil || answer.Error == "" {
		answer.Error = strings.TrimSpace(m[2])
	}
	e := &answerError{status: status, message: answer.Error}
	if status == http.StatusNotFound && strings.HasPrefix(answer.Error, "unknown realm ") {
		e.hint = c.realmsHint()
	}
	return e
}

// realmsHint names the server's realms, for an unknown --realm.
func (c *apiClient) realmsHint() string {
	const hint = "--realm names the realm of an api_token_auth handler"
	resp, err := caddycmd.AdminAPIRequest(c.address, http.MethodGet, APIPrefix, nil, nil)
	if err != nil {
		return hint
	}
	defer resp.Body.Close()
	var realms []realmInfo
	if json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(&realms) != nil {
		return hint
	}
	if len(realms) == 0 {
		return "the server has no api_token_auth realm"
	}
	names := make([]string, len(realms))
	for i, r := range realms {
		names[i] = r.Name
	}
	return hint + "; the server has " + strings.Join(names, ", ")
}

func (c *apiClient) create(_ context.Context, req createRequest) (TokenView, error) {
	var out TokenView
	err := c.do(http.MethodPost, []string{"tokens"}, nil, req, &out)
	return out, err
}

func (c *apiClient) list(_ context.Context, user, status string) ([]TokenView, error) {
	q := url.Values{}
	if user != "" {
		q.Set("user", user)
	}
	if status != "" {
		q.Set("status", status)
	}
	var out []TokenView
	err := c.do(http.MethodGet, []string{"tokens"}, q, nil, &out)
	return out, err
}

func (c *apiClient) revoke(_ context.Context, id string) (TokenView, error) {
	var out TokenView
	err := c.do(http.MethodDelete, []string{"tokens", id}, nil, nil, &out)
	return out, err
}

func (c *apiClient) revokeUser(_ context.Context, user string) (int, error) {
	var out struct {
		Revoked int `json:"revoked"`
	}
	err := c.do(http.MethodDelete, []string{"users", user, "tokens"}, nil, nil, &out)
	return out.Revoked, err
}

func (c *apiClient) rotate(_ context.Context, id string, req rotateRequest) (TokenView, error) {
	var out TokenView
	err := c.do(http.MethodPost, []string{"tokens", id, "rotate"}, nil, req, &out)
	return out, err
}

func (c *apiClient) users(context.Context) ([]UserView, error) {
	var out []UserView
	err := c.do(http.MethodGet, []string{"users"}, nil, nil, &out)
	return out, err
}

func (c *apiClient) putUser(_ context.Context, name string, req userRequest) (UserView, error) {
	var out UserView
	err := c.do(http.MethodPut, []string{"users", name}, nil, req, &out)
	return out, err
}

func (c *apiClient) lockouts(context.Context) (captcha.State, error) {
	var out captcha.State
	err := c.do(http.MethodGet, []string{"lockouts"}, nil, nil, &out)
	return out, err
}

func (c *apiClient) clearUserLockout(_ context.Context, user string) (int, error) {
	var out struct {
		Cleared int `json:"challenges_cleared"`
	}
	err := c.do(http.MethodDelete, []string{"lockouts", "users", user}, nil, nil, &out)
	return out.Cleared, err
}

func (c *apiClient) clearIPLockout(_ context.Context, ip string) (bool, error) {
	var out struct {
		Cleared bool `json:"ban_cleared"`
	}
	err := c.do(http.MethodDelete, []string{"lockouts", "ips", ip}, nil, nil, &out)
	return out.Cleared, err
}

func (c *apiClient) where() string {
	return fmt.Sprintf("realm %s at %s", c.realm, c.address)
}

func (c *apiClient) close() error { return nil }
