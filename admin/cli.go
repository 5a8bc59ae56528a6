// Package admin adds token management to Caddy's own tooling: the
// `caddy api-token` command.
package admin

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "api-token",
		Usage: "<create|hash> [flags]",
		Short: "Manages API tokens of the api_token_auth handler",
		Long: `
Manages the personal API tokens that the api_token_auth handler checks.

  create   makes a token and prints its secret, once
  hash     reads a token on standard input and prints the form stores keep

Run 'caddy api-token <command> --help' for a command's flags.
`,
		CobraFunc: addSubcommands,
	})
}

// addSubcommands builds `caddy api-token` under cmd.
func addSubcommands(cmd *cobra.Command) {
	cmd.AddCommand(createCommand(), hashCommand())
}

func createCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "create --store file:<path> --user <user> [--name <name>] [--scope read-only|read-write] [--expires 90d|<RFC 3339 time>] [--ip <cidr>]... [--prefix <prefix>]",
		Short: "Creates a token and prints its secret once",
		Long: `
Creates a token for a user directly in a token store, with no server
running. The secret goes to standard output, alone on its line, so that
scripts can capture it; it is shown this once and never stored.
A description of the token goes to standard error.

--expires takes a duration from now (90d, 12h) or an RFC 3339 time.
--ip may be repeated; each is a CIDR or an address. Default: any address.
--prefix must match the realm's token_prefix. Default: cat_.
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCreate(cmd, time.Now())
		},
	}
	f := cmd.Flags()
	f.String("store", "", "Token store to write to: file:<path>")
	f.String("user", "", "User who owns the token")
	f.String("name", "", "Label for the token")
	f.String("scope", string(tokenstore.ScopeReadWrite), "read-only (GET, HEAD, OPTIONS) or read-write")
	f.String("expires", "", "Expiry: a duration from now (90d) or an RFC 3339 time; default never")
	f.StringArray("ip", nil, "Client address or CIDR allowed to use the token (repeatable)")
	f.String("prefix", tokenstore.DefaultPrefix, "Token prefix; must match the realm's token_prefix")
	return cmd
}

// runCreate creates the token. The secret goes to the command's standard
// output alone on its line; everything else to its standard error.
func runCreate(cmd *cobra.Command, now time.Time) error {
	fl := caddycmd.Flags{FlagSet: cmd.Flags()}
	storeSpec := fl.String("store")
	if storeSpec == "" {
		return errors.New("--store is required, e.g. --store file:/etc/caddy/tokens.json")
	}
	cfg, err := tokenstore.ParseSpec(storeSpec)
	if err != nil {
		return fmt.Errorf("--store: %v", err)
	}
	scope, err := tokenstore.ParseScope(fl.String("scope"))
	if err != nil {
		return fmt.Errorf("--scope: %v", err)
	}
	var expires *time.Time
	if s := fl.String("expires"); s != "" {
		at, err := parseExpiry(s, now)
		if err != nil {
			return fmt.Errorf("--expires: %v", err)
		}
		expires = &at
	}
	ips, err := fl.GetStringArray("ip")
	if err != nil {
		return err
	}
	if _, err := tokenstore.ParsePrefixes(ips); err != nil {
		return fmt.Errorf("--ip: %v", err)
	}
	prefix := fl.String("prefix")
	if err := tokenstore.ValidatePrefix(prefix); err != nil {
		return fmt.Errorf("--prefix %v", err)
	}
	req := tokenstore.TokenRequest{
		User:       fl.String("user"),
		Name:       fl.String("name"),
		Scope:      scope,
		Expires:    expires,
		AllowedIPs: ips,
	}
	if req.User == "" {
		return errors.New("--user is required")
	}
	token, secret, err := tokenstore.NewToken(req, prefix, now, 0)
	if err != nil {
		return err
	}

	store, err := tokenstore.Open(cfg, nil)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.CreateToken(context.Background(), token); err != nil {
		return fmt.Errorf("creating token in %s: %v", cfg, err)
	}

	fmt.Fprintf(cmd.ErrOrStderr(), "Created token %s for user %s (%s, expires %s) in %s.\n",
		token.ID, token.User, token.Scope, describeExpiry(token.Expires), cfg)
	fmt.Fprintln(cmd.ErrOrStderr(), "The token follows; it is shown only this once:")
	fmt.Fprintln(cmd.OutOrStdout(), secret)
	return nil
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

func describeExpiry(at *time.Time) string {
	if at == nil {
		return "never"
	}
	return at.Format(time.RFC3339)
}

func hashCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "hash",
		Short: "Prints the stored form (sha256:<hex>) of a token read on standard input",
		Long: `
Reads one token on standard input (without echo on a terminal) and prints
the form in which stores keep it, sha256:<hex>. Use it to import a token
from another system, or to find a token in a store file.
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			secret, err := readSecret(cmd.InOrStdin())
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tokenstore.HashSecret(secret))
			return nil
		},
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
