// Package apitoken registers every module of caddy-apitoken, so that
// `xcaddy build --with github.com/caddy-apitoken/caddy-apitoken` builds
// them all into Caddy.
package apitoken

import (
	// The api_token_auth HTTP handler and its Caddyfile directive.
	_ "github.com/caddy-apitoken/caddy-apitoken/caddyauth"
	// The `caddy api-token` command.
	_ "github.com/caddy-apitoken/caddy-apitoken/admin"
)
