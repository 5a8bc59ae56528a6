// Package admin adds token management to Caddy's own tooling: routes on
// Caddy's admin API and the `caddy api-token` command.
package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/caddy-apitoken/caddy-apitoken/captcha"
	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "api-token",
		Usage: "<create|list|revoke|rotate|unlock|user|hash|migrate> [flags]",
		Short: "Manages API tokens of the api_token_auth handler",
		Long: `
Manages the personal API tokens, users and lockouts of the api_token_auth
handler.

  create   makes a token and prints its secret, once
  list     lists tokens
  revoke   revokes a token, or every token of a user
  rotate   replaces a token with a new one; the old one may work a while longer
  unlock   clears a user's CAPTCHA challenges or an IP address's ban
  user     shows or sets a user's groups and disabled flag
  hash     reads a token on standard input and prints the form stores keep
  migrate  copies users, tokens and settings from one store to another

By default the commands talk to the running server's admin API, like
'caddy reload' and 'caddy stop' do: --address, or the admin address of the
config named by --config, or localhost:2019 (CADDY_ADMIN overrides it).
--realm picks the api_token_auth realm (default: default). Changes made
through the admin API take effect on the server at once.

With --store file:<path>, sqlite:<path> or postgres:<dsn> they work on a
store directly, with no server running.

Secrets, tables and --json output go to standard output; descriptions of
what was done go to standard error. On failure a command exits with
status 1 and prints the reason.

Run 'caddy api-token <command> --help' for a command's flags.
`,
		CobraFunc: addSubcommands,
	})
}

// addSubcommands builds `caddy api-token` under cmd.
func addSubcommands(cmd *cobra.Command) {
	cmd.AddCommand(createCommand(), listCommand(), revokeCommand(), rotateCommand(),
		unlockCommand(), userCommand(), hashCommand(), migrateCommand())
}

// runE adapts a command to Caddy's way of ending one, as `caddy reload`
// does: an error goes through Caddy's logger, prefixed with the command,
// and the process exits with status 1 (caddy.ExitCodeFailedStartup).
func runE(body func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		return caddycmd.WrapCommandFuncForCobra(func(caddycmd.Flags) (int, error) {
			if err := body(cmd, args); err != nil {
				return caddy.ExitCodeFailedStartup, fmt.Errorf("%s: %v", cmd.CommandPath(), err)
			}
			return caddy.ExitCodeSuccess, nil
		})(cmd, args)
	}
}

// addTargetFlags adds the flags that choose what a command works on: the
// running server's admin API, or a store.
func addTargetFlags(f *pflag.FlagSet) {
	f.String("address", "", "Admin API address of the running server (default: from --config, else localhost:2019)")
	f.StringP("config", "c", "", "Config file to read the admin address from, if --address is not used")
	f.StringP("adapter", "a", "", "Config adapter for --config")
	f.String("realm", "default", "Realm of api_token_auth to manage")
	f.String("store", "", "Work on this store directly, with no server: file:<path>")
}

// addPrefixFlag adds --prefix to a command that makes tokens.
func addPrefixFlag(f *pflag.FlagSet) {
	f.String("prefix", tokenstore.DefaultPrefix, "Token prefix with --store; must match the realm's token_prefix")
}

// openBackend returns what the command works on, as its flags say.
func openBackend(cmd *cobra.Command) (backend, error) {
	f := cmd.Flags()
	realm, _ := f.GetString("realm")
	if realm == "" {
		return nil, errors.New("--realm must not be empty")
	}
	prefix := tokenstore.DefaultPrefix
	if f.Lookup("prefix") != nil {
		prefix, _ = f.GetString("prefix")
	}
	if spec, _ := f.GetString("store"); spec != "" {
		for _, name := range []string{"address", "config", "adapter"} {
			if f.Changed(name) {
				return nil, fmt.Errorf("--store works on a store with no server; it does not go with --%s", name)
			}
		}
		return openOffline(spec, realm, prefix)
	}
	if f.Changed("prefix") {
		return nil, errors.New("--prefix goes only with --store: the server makes tokens with its realm's token_prefix")
	}
	address, _ := f.GetString("address")
	config, _ := f.GetString("config")
	adapter, _ := f.GetString("adapter")
	adminAddr, err := caddycmd.DetermineAdminAPIAddress(address, nil, config, adapter)
	if err != nil {
		return nil, fmt.Errorf("couldn't determine admin API address: %v", err)
	}
	return &apiClient{address: adminAddr, realm: realm}, nil
}

// withBackend runs do on the command's backend and closes it after.
func withBackend(cmd *cobra.Command, do func(ctx context.Context, b backend) error) (err error) {
	b, err := openBackend(cmd)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := b.close(); cerr != nil && err == nil {
			err = fmt.Errorf("closing %s: %v", b.where(), cerr)
		}
	}()
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	return do(ctx, b)
}

func createCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "create --user <user> [--name <name>] [--scope read-only|read-write] [--expires 90d|<RFC 3339 time>] [--ip <cidr>]... [--header <name>=<value>]... [--hash <hash>] [--json]",
		Short: "Creates a token and prints its secret once",
		Long: `
Creates a token for a user. The secret goes to standard output, alone on
its line, so that scripts can capture it; it is shown this once and never
stored. A description of the token goes to standard error. With --json,
standard output is the token's JSON instead, secret included.

--expires takes a duration from now (90d, 12h) or an RFC 3339 time.
Default: never, or the realm's max_lifetime.
--ip may be repeated; each is a CIDR or an address. Default: any address.
--header Name=Value may be repeated: every request with the token must
carry that header with that value.
--hash imports a credential from another system by its stored form
(sha256:<hex> as 'caddy api-token hash' prints it; bcrypt:… or argon2id:…
as 'caddy hash-password' prints it, for Basic authentication only)
instead of making a secret; nothing is printed on standard output.
--prefix (with --store only) must match the realm's token_prefix.
`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			return runCreate(cmd, time.Now())
		}),
	}
	f := cmd.Flags()
	f.String("user", "", "User who owns the token")
	f.String("name", "", "Label for the token")
	f.String("scope", string(tokenstore.ScopeReadWrite), "read-only (GET, HEAD, OPTIONS) or read-write")
	f.String("expires", "", "Expiry: a duration from now (90d) or an RFC 3339 time; default never")
	f.StringArray("ip", nil, "Client address or CIDR allowed to use the token (repeatable)")
	f.StringArray("header", nil, "Name=Value: a header every request with the token must carry (repeatable)")
	f.String("hash", "", "Import an existing credential by its hash instead of making a secret")
	f.Bool("json", false, "Print the token as JSON")
	addPrefixFlag(f)
	addTargetFlags(f)
	return cmd
}

// runCreate creates the token. The secret goes to the command's standard
// output alone on its line; everything else to its standard error.
func runCreate(cmd *cobra.Command, now time.Time) error {
	fl := caddycmd.Flags{FlagSet: cmd.Flags()}
	req := createRequest{
		User: fl.String("user"),
		Name: fl.String("name"),
		Hash: fl.String("hash"),
	}
	if req.User == "" {
		return errors.New("--user is required")
	}
	scope, err := tokenstore.ParseScope(fl.String("scope"))
	if err != nil {
		return fmt.Errorf("--scope: %v", err)
	}
	req.Scope = string(scope)
	if req.expiryRequest, err = expiryFlag(fl.String("expires"), now); err != nil {
		return err
	}
	if req.AllowedIPs, err = fl.GetStringArray("ip"); err != nil {
		return err
	}
	if _, err := tokenstore.ParsePrefixes(req.AllowedIPs); err != nil {
		return fmt.Errorf("--ip: %v", err)
	}
	headers, err := fl.GetStringArray("header")
	if err != nil {
		return err
	}
	if req.RequiredHeaders, err = parseHeaders(headers); err != nil {
		return err
	}
	return withBackend(cmd, func(ctx context.Context, b backend) error {
		view, err := b.create(ctx, req)
		if err != nil {
			return err
		}
		if fl.Bool("json") {
			return printJSON(cmd.OutOrStdout(), view)
		}
		stderr := cmd.ErrOrStderr()
		if view.Token == "" {
			how := "Basic and Bearer"
			if view.BasicOnly {
				how = "Basic authentication only"
			}
			fmt.Fprintf(stderr, "Imported token %s for user %s (%s, expires %s; %s) in %s.\n",
				view.ID, view.User, view.Scope, describeExpiry(view.Expires), how, b.where())
			return nil
		}
		fmt.Fprintf(stderr, "Created token %s for user %s (%s, expires %s) in %s.\n",
			view.ID, view.User, view.Scope, describeExpiry(view.Expires), b.where())
		fmt.Fprintln(stderr, "The token follows; it is shown only this once:")
		fmt.Fprintln(cmd.OutOrStdout(), view.Token)
		return nil
	})
}

// expiryFlag turns --expires into the API's expires_in (a duration) or
// expires (an RFC 3339 time), checked here so that a mistake names the
// flag. "" asks for no expiry.
func expiryFlag(s string, now time.Time) (expiryRequest, error) {
	if s == "" {
		return expiryRequest{}, nil
	}
	at, err := parseExpiry(s, now)
	if err != nil {
		return expiryRequest{}, fmt.Errorf("--expires: %v", err)
	}
	if !at.Truncate(time.Second).After(now) {
		return expiryRequest{}, fmt.Errorf("--expires: %s is not in the future", s)
	}
	if _, err := time.Parse(time.RFC3339, s); err == nil {
		return expiryRequest{Expires: s}, nil
	}
	return expiryRequest{ExpiresIn: s}, nil
}

// parseExpiry reads a duration from now (Caddy's forms plus d for days)
// or an RFC 3339 time.
func parseExpiry(s string, now time.Time) (time.Time, error) {
	if at, err := time.Parse(time.RFC3339, s); err == nil {
		return at, nil
	}
	d, err := caddy.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("%q is neither a positive duration (90d, 12h) nor an RFC 3339 time", s)
	}
	return now.Add(d), nil
}

// parseHeaders reads --header Name=Value flags.
func parseHeaders(list []string) (map[string]string, error) {
	if len(list) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(list))
	for _, s := range list {
		name, value, ok := strings.Cut(s, "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.ContainsAny(name, " \t\r\n:") {
			return nil, fmt.Errorf("--header %q: want Name=Value with a header name such as X-Team", s)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("--header %q: header %s given twice", s, name)
		}
		out[name] = value
	}
	return out, nil
}

func describeExpiry(at *time.Time) string {
	if at == nil {
		return "never"
	}
	return at.Format(time.RFC3339)
}

func listCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list [--user <user>] [--status active|expired|revoked] [--json]",
		Short: "Lists tokens",
		Long: `
Lists the tokens of the realm, oldest first, as a table: ID, user, name,
scope, status, expiry and last use. Secrets and hashes are never shown.
With --json, the tokens' JSON array as the admin API answers it.
`,
		Args: cobra.NoArgs,
		RunE: runE(runList),
	}
	f := cmd.Flags()
	f.String("user", "", "Only this user's tokens")
	f.String("status", "", "Only tokens with this status: active, expired or revoked")
	f.Bool("json", false, "Print the tokens as JSON")
	addTargetFlags(f)
	return cmd
}

func runList(cmd *cobra.Command, _ []string) error {
	fl := caddycmd.Flags{FlagSet: cmd.Flags()}
	user, status := fl.String("user"), fl.String("status")
	if status != "" && !statuses[status] {
		return fmt.Errorf("--status %q: want active, expired or revoked", status)
	}
	return withBackend(cmd, func(ctx context.Context, b backend) error {
		tokens, err := b.list(ctx, user, status)
		if err != nil {
			return err
		}
		if fl.Bool("json") {
			return printJSON(cmd.OutOrStdout(), tokens)
		}
		tw := newTable(cmd.OutOrStdout(), "ID", "USER", "NAME", "SCOPE", "STATUS", "EXPIRES", "LAST USED")
		for _, t := range tokens {
			tw.row(t.ID, t.User, orDash(t.Name), string(t.Scope), t.Status,
				describeExpiry(t.Expires), describeTime(t.LastUsed, "never"))
		}
		return tw.flush()
	})
}

func revokeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "revoke <id> | --user <user>",
		Short: "Revokes a token, or every token of a user",
		Long: `
Revokes the token with the given id, or with --user every token of that
user. A revoked token stays in the store, marked revoked, and stops
working at once on the server (within 2 seconds on servers that watch the
store file). With --json, prints the revoked token (or the count) as JSON.
`,
		Args: cobra.MaximumNArgs(1),
		RunE: runE(runRevoke),
	}
	f := cmd.Flags()
	f.String("user", "", "Revoke every token of this user")
	f.Bool("json", false, "Print the result as JSON")
	addTargetFlags(f)
	return cmd
}

func runRevoke(cmd *cobra.Command, args []string) error {
	fl := caddycmd.Flags{FlagSet: cmd.Flags()}
	user := fl.String("user")
	switch {
	case len(args) == 0 && user == "":
		return errors.New("name the token to revoke (revoke <id>), or --user to revoke all of a user's tokens")
	case len(args) == 1 && user != "":
		return errors.New("give a token id or --user, not both")
	case len(args) == 1 && args[0] == "":
		return errors.New("the token id is empty")
	}
	return withBackend(cmd, func(ctx context.Context, b backend) error {
		if user != "" {
			n, err := b.revokeUser(ctx, user)
			if err != nil {
				return err
			}
			if fl.Bool("json") {
				return printJSON(cmd.OutOrStdout(), map[string]any{"user": user, "revoked": n})
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Revoked %d token(s) of user %s in %s.\n", n, user, b.where())
			return nil
		}
		view, err := b.revoke(ctx, args[0])
		if err != nil {
			return err
		}
		if fl.Bool("json") {
			return printJSON(cmd.OutOrStdout(), view)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "Revoked token %s of user %s in %s.\n", view.ID, view.User, b.where())
		return nil
	})
}

func rotateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rotate <id> [--grace 24h] [--expires 90d|<RFC 3339 time>] [--json]",
		Short: "Replaces a token with a new one and prints the new secret once",
		Long: `
Makes a new token with the old one's user, name, scope, allowed IPs and
required headers, and has the old one expire after the grace period
(default 0: it stops working at once). The new secret goes to standard
output alone on its line; a description, with when the old token stops,
to standard error. With --json, the new token's JSON (with the old one's
under rotated_from).

The new token lives as long as the old one was meant to, unless --expires
says otherwise. --prefix (with --store only) must match the realm's
token_prefix.
`,
		Args: cobra.ExactArgs(1),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			return runRotate(cmd, args, time.Now())
		}),
	}
	f := cmd.Flags()
	f.String("grace", "", "How long the old token keeps working, e.g. 24h; default 0")
	f.String("expires", "", "Expiry of the new token: a duration from now (90d) or an RFC 3339 time")
	f.Bool("json", false, "Print the new token as JSON")
	addPrefixFlag(f)
	addTargetFlags(f)
	return cmd
}

func runRotate(cmd *cobra.Command, args []string, now time.Time) error {
	fl := caddycmd.Flags{FlagSet: cmd.Flags()}
	var req rotateRequest
	if g := fl.String("grace"); g != "" {
		if d, err := caddy.ParseDuration(g); err != nil || d < 0 {
			return fmt.Errorf("--grace %q: want a duration of 0 or more, such as 24h", g)
		}
		req.Grace = g
	}
	var err error
	if req.expiryRequest, err = expiryFlag(fl.String("expires"), now); err != nil {
		return err
	}
	return withBackend(cmd, func(ctx context.Context, b backend) error {
		view, err := b.rotate(ctx, args[0], req)
		if err != nil {
			return err
		}
		if fl.Bool("json") {
			return printJSON(cmd.OutOrStdout(), view)
		}
		stderr := cmd.ErrOrStderr()
		fmt.Fprintf(stderr, "Rotated token %s of user %s: new token %s (%s, expires %s) in %s.\n",
			args[0], view.User, view.ID, view.Scope, describeExpiry(view.Expires), b.where())
		if old := view.RotatedFrom; old != nil && old.Expires != nil && old.Expires.After(time.Now()) {
			fmt.Fprintf(stderr, "The old token %s keeps working until %s.\n", old.ID, old.Expires.Format(time.RFC3339))
		} else {
			fmt.Fprintf(stderr, "The old token %s no longer works.\n", args[0])
		}
		fmt.Fprintln(stderr, "The new token follows; it is shown only this once:")
		fmt.Fprintln(cmd.OutOrStdout(), view.Token)
		return nil
	})
}

func unlockCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "unlock [--user <user>] [--ip <address>] [--list]",
		Short: "Clears a user's CAPTCHA challenges or an IP address's ban",
		Long: `
Clears lockouts on the running server: --user clears that user's failure
counts and CAPTCHA challenges from every address; --ip clears an address's
ban and its failure counts. --list prints the counters, challenges and bans
in force (after clearing, if --user or --ip is given too); with --json as
JSON.

Lockouts live in the running server (and Caddy's storage), not in the
token store, so this command needs the admin API: --store does not work.
`,
		Args: cobra.NoArgs,
		RunE: runE(runUnlock),
	}
	f := cmd.Flags()
	f.String("user", "", "Clear this user's failure counts and CAPTCHA challenges")
	f.String("ip", "", "Clear this client address's ban and failure counts")
	f.Bool("list", false, "List the lockouts in force")
	f.Bool("json", false, "With --list, print the lockouts as JSON")
	addTargetFlags(f)
	return cmd
}

func runUnlock(cmd *cobra.Command, _ []string) error {
	fl := caddycmd.Flags{FlagSet: cmd.Flags()}
	user, ip, list := fl.String("user"), fl.String("ip"), fl.Bool("list")
	if user == "" && ip == "" && !list {
		return errors.New("give --user, --ip or both (or --list to see the lockouts)")
	}
	if ip != "" {
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			return fmt.Errorf("--ip %q: not an IP address", ip)
		}
		ip = addr.Unmap().String()
	}
	if fl.String("store") != "" {
		return errNoServer
	}
	return withBackend(cmd, func(ctx context.Context, b backend) error {
		stderr := cmd.ErrOrStderr()
		if user != "" {
			n, err := b.clearUserLockout(ctx, user)
			if err != nil {
				return err
			}
			fmt.Fprintf(stderr, "Cleared the failure counts and %d CAPTCHA challenge(s) of user %s in %s.\n", n, user, b.where())
		}
		if ip != "" {
			banned, err := b.clearIPLockout(ctx, ip)
			if err != nil {
				return err
			}
			what := "IP address %s was not banned; cleared its failure counts in %s.\n"
			if banned {
				what = "Lifted the ban of IP address %s and cleared its failure counts in %s.\n"
			}
			fmt.Fprintf(stderr, what, ip, b.where())
		}
		if !list {
			return nil
		}
		state, err := b.lockouts(ctx)
		if err != nil {
			return err
		}
		if fl.Bool("json") {
			return printJSON(cmd.OutOrStdout(), state)
		}
		return printLockouts(cmd.OutOrStdout(), state)
	})
}

// printLockouts prints the challenges, bans and counters as tables.
func printLockouts(w io.Writer, s captcha.State) error {
	addr := func(ip netip.Addr) string {
		if !ip.IsValid() {
			return "any"
		}
		return ip.String()
	}
	fmt.Fprintln(w, "CAPTCHA challenges:")
	tw := newTable(w, "USER", "IP", "STARTED", "EXPIRES")
	for _, c := range s.Challenges {
		expires := "never"
		if !c.Expires.IsZero() {
			expires = c.Expires.Format(time.RFC3339)
		}
		tw.row(c.User, addr(c.IP), c.Started.Format(time.RFC3339), expires)
	}
	if err := tw.flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nIP bans:")
	tw = newTable(w, "IP", "STARTED", "UNTIL")
	for _, b := range s.Bans {
		tw.row(b.IP.String(), b.Started.Format(time.RFC3339), b.Until.Format(time.RFC3339))
	}
	if err := tw.flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nFailure counts:")
	tw = newTable(w, "USER", "IP", "FAILURES", "LAST")
	for _, c := range s.Counters {
		tw.row(orDash(c.User), addr(c.IP), fmt.Sprint(c.Failures), c.Last.Format(time.RFC3339))
	}
	return tw.flush()
}

func userCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "user [<name> [--groups <group,...>] [--disable|--enable]]",
		Short: "Shows or sets a user's groups and disabled flag",
		Long: `
With a name, sets that user's groups (--groups, comma-separated; "" for
none) and disabled flag (--disable, --enable); what is not given keeps its
value. Then prints the user. A disabled user's tokens are refused (403)
at once. A user need not be listed to own tokens; an unlisted user has no
groups and is enabled.

Without a name, lists the users. With --json, the JSON of the admin API.
`,
		Args: cobra.MaximumNArgs(1),
		RunE: runE(runUser),
	}
	f := cmd.Flags()
	f.String("groups", "", "The user's groups, comma-separated; \"\" for none")
	f.Bool("disable", false, "Disable the user: their tokens stop working")
	f.Bool("enable", false, "Enable the user again")
	f.Bool("json", false, "Print the user(s) as JSON")
	addTargetFlags(f)
	return cmd
}

func runUser(cmd *cobra.Command, args []string) error {
	fl := caddycmd.Flags{FlagSet: cmd.Flags()}
	change := fl.Changed("groups") || fl.Bool("disable") || fl.Bool("enable")
	if fl.Bool("disable") && fl.Bool("enable") {
		return errors.New("--disable and --enable contradict each other")
	}
	if len(args) == 0 && change {
		return errors.New("name the user to change: user <name> [--groups …] [--disable|--enable]")
	}
	if len(args) == 1 && args[0] == "" {
		return errors.New("the user name is empty")
	}
	return withBackend(cmd, func(ctx context.Context, b backend) error {
		users, err := b.users(ctx)
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if len(args) == 0 {
			if fl.Bool("json") {
				return printJSON(out, users)
			}
			return printUsers(out, users...)
		}
		name := args[0]
		user := UserView{Name: name, Groups: []string{}}
		listed := false
		for _, u := range users {
			if u.Name == name {
				user, listed = u, true
			}
		}
		if change {
			req := userRequest{Groups: user.Groups, Disabled: user.Disabled}
			if fl.Changed("groups") {
				req.Groups = splitGroups(fl.String("groups"))
			}
			if fl.Bool("disable") {
				req.Disabled = true
			}
			if fl.Bool("enable") {
				req.Disabled = false
			}
			if user, err = b.putUser(ctx, name, req); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Updated user %s in %s.\n", name, b.where())
		} else if !listed {
			fmt.Fprintf(cmd.ErrOrStderr(), "User %s is not listed in %s: no groups, enabled.\n", name, b.where())
		}
		if fl.Bool("json") {
			return printJSON(out, user)
		}
		return printUsers(out, user)
	})
}

// splitGroups reads --groups: comma-separated, spaces around names ignored.
func splitGroups(s string) []string {
	groups := []string{}
	for g := range strings.SplitSeq(s, ",") {
		if g = strings.TrimSpace(g); g != "" {
			groups = append(groups, g)
		}
	}
	return groups
}

func printUsers(w io.Writer, users ...UserView) error {
	tw := newTable(w, "USER", "GROUPS", "STATUS")
	for _, u := range users {
		status := "enabled"
		if u.Disabled {
			status = "disabled"
		}
		tw.row(u.Name, orDash(strings.Join(u.Groups, ",")), status)
	}
	return tw.flush()
}

func hashCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "hash",
		Short: "Prints the stored form (sha256:<hex>) of a token read on standard input",
		Long: `
Reads one token on standard input (without echo on a terminal) and prints
the form in which stores keep it, sha256:<hex>. Use it to import a token
from another system (create --hash), or to find a token in a store file.
`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			secret, err := readSecret(cmd.InOrStdin())
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tokenstore.HashSecret(secret))
			return nil
		}),
	}
}

// readSecret reads one line: from a terminal without echo, otherwise as
// piped in. Surrounding whitespace (a trailing newline) is not part of it.
func readSecret(in io.Reader) (string, error) {
	var line string
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fd := int(f.Fd())
		fmt.Fprint(os.Stderr, "Token: ")
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(os.Stderr)
		if err != nil {
			return "", fmt.Errorf("reading token: %v", err)
		}
		line = string(b)
	} else {
		s, err := bufio.NewReader(in).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("reading token: %v", err)
		}
		line = s
	}
	secret := strings.TrimSpace(line)
	if secret == "" {
		return "", errors.New("no token on standard input")
	}
	return secret, nil
}

// printJSON writes v as indented JSON, as the admin API answers.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table prints aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, headings ...string) table {
	t := table{tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row(headings...)
	return t
}

func (t table) row(cells ...string) { fmt.Fprintln(t.tw, strings.Join(cells, "\t")) }

func (t table) flush() error { return t.tw.Flush() }

// orDash shows an empty cell as "-".
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func describeTime(at *time.Time, none string) string {
	if at == nil {
		return none
	}
	return at.Format(time.RFC3339)
}
