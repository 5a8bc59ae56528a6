package caddyauth

import (
	"sort"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-apitoken/caddy-apitoken/captcha"
	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// Realm is what the admin API and the CLI need of a live realm: its store,
// its lockout, and the options that govern new tokens.
type Realm struct {
	Name        string
	Store       tokenstore.Store
	StoreConfig tokenstore.Config
	Lockout     *captcha.Lockout
	TokenPrefix string
	MaxLifetime time.Duration
	// TestEndpointConfigured is false when the config says
	// `test_endpoint off`; the store's setting can only turn it off too.
	TestEndpointConfigured bool
}

// realmEntry holds the latest Realm provisioned under a name. Caddy
// provisions a new config before it cleans up the old one, so an entry
// outlives a reload and simply takes the new config's values.
type realmEntry struct{ current atomic.Pointer[Realm] }

func (*realmEntry) Destruct() error { return nil }

// realms is the registry of live realms. Caddy builds admin modules with
// New() on every config load and cannot configure them; this is how the
// admin module finds the realms.
var realms = caddy.NewUsagePool()

// register makes h's realm findable until Cleanup unregisters it.
func (h *Handler) register() {
	v, _, _ := realms.LoadOrNew(h.Realm, func() (caddy.Destructor, error) { return new(realmEntry), nil })
	v.(*realmEntry).current.Store(&Realm{
		Name:                   h.Realm,
		Store:                  h.store,
		StoreConfig:            h.storeConfig,
		Lockout:                h.lockout,
		TokenPrefix:            h.TokenPrefix,
		MaxLifetime:            time.Duration(h.MaxLifetime),
		TestEndpointConfigured: h.testEnabled,
	})
}

func (h *Handler) unregister() error {
	_, err := realms.Delete(h.Realm)
	return err
}

// LookupRealm returns the live realm called name.
func LookupRealm(name string) (*Realm, bool) {
	var found *Realm
	realms.Range(func(key, value any) bool {
		if key == name {
			found = value.(*realmEntry).current.Load()
			return false
		}
		return true
	})
	return found, found != nil
}

// Realms returns every live realm, by name.
func Realms() []*Realm {
	var out []*Realm
	realms.Range(func(_, value any) bool {
		if r := value.(*realmEntry).current.Load(); r != nil {
			out = append(out, r)
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
