// Package plugin registers the garage-ipfs datastore with kubo, as the
// datastore type "garageipfs".
//
// A repo's Datastore.Spec mounts it at /blocks, usually under a "measure"
// wrapper (`garage-ipfs kubo init` writes this):
//
//	{"mountpoint": "/blocks", "type": "measure", "prefix": "garageipfs.datastore",
//	 "child": {"type": "garageipfs", "namespace": "kubo-12D3KooW...",
//	           "endpoint": "127.0.0.1:3982", "token_file": "garage-ipfs.token",
//	           "timeout": "30s"}}
//
// Only the type and the namespace identify the data (the repo's
// datastore_spec holds just these two), so the endpoint, the token's
// source and the timeout can change without a migration. The token itself
// is read from token_file (relative to the repo) or from the environment
// variable named by token_env; it is never in the config.
package plugin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ipfs/kubo/plugin"
	"github.com/ipfs/kubo/repo"
	"github.com/ipfs/kubo/repo/fsrepo"

	"garage-ipfs/kubo-plugin/datastore"
)

// TypeName is the datastore type in a kubo Datastore.Spec.
const TypeName = "garageipfs"

// Plugins is the list kubo's loader takes.
var Plugins = []plugin.Plugin{&Plugin{}}

// Plugin is the kubo datastore plugin.
type Plugin struct{}

var _ plugin.PluginDatastore = (*Plugin)(nil)

// Name is the plugin's name in `ipfs version --all`-style listings.
func (*Plugin) Name() string { return "ds-garageipfs" }

// Version of the plugin.
func (*Plugin) Version() string { return "0.1.0" }

// Init does nothing.
func (*Plugin) Init(*plugin.Environment) error { return nil }

// DatastoreTypeName is "garageipfs".
func (*Plugin) DatastoreTypeName() string { return TypeName }

// DatastoreConfigParser parses the spec's child entry.
func (*Plugin) DatastoreConfigParser() fsrepo.ConfigFromMap {
	return ParseConfig
}

// Config is a parsed spec entry.
type Config struct {
	Namespace string
	Endpoint  string
	TokenFile string
	TokenEnv  string
	Timeout   time.Duration
}

var known = map[string]bool{
	"type": true, "namespace": true, "endpoint": true,
	"token_file": true, "token_env": true, "timeout": true,
}

// ParseConfig reads a spec entry; unknown fields are refused, so that a
// misspelt "token_fiel" does not silently mean "no token".
func ParseConfig(params map[string]any) (fsrepo.DatastoreConfig, error) {
	for k := range params {
		if !known[k] {
			return nil, fmt.Errorf("garageipfs datastore: unknown field %q (known: namespace, endpoint, token_file, token_env, timeout)", k)
		}
	}
	str := func(k string) (string, error) {
		v, ok := params[k]
		if !ok {
			return "", nil
		}
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("garageipfs datastore: %q must be a string", k)
		}
		return s, nil
	}
	var c Config
	var err error
	if c.Namespace, err = str("namespace"); err != nil {
		return nil, err
	}
	if c.Namespace == "" {
		return nil, errors.New("garageipfs datastore: 'namespace' is missing")
	}
	if c.Endpoint, err = str("endpoint"); err != nil {
		return nil, err
	}
	if c.TokenFile, err = str("token_file"); err != nil {
		return nil, err
	}
	if c.TokenEnv, err = str("token_env"); err != nil {
		return nil, err
	}
	if c.TokenFile != "" && c.TokenEnv != "" {
		return nil, errors.New("garageipfs datastore: give token_file or token_env, not both")
	}
	timeout, err := str("timeout")
	if err != nil {
		return nil, err
	}
	if timeout != "" {
		if c.Timeout, err = time.ParseDuration(timeout); err != nil || c.Timeout <= 0 {
			return nil, fmt.Errorf("garageipfs datastore: timeout %q is not a positive duration such as \"30s\"", timeout)
		}
	}
	return &c, nil
}

// DiskSpec is the data's identity: type and namespace.
func (c *Config) DiskSpec() fsrepo.DiskSpec {
	return map[string]any{"type": TypeName, "namespace": c.Namespace}
}

// Create opens the datastore (without connecting: see datastore.New).
func (c *Config) Create(repoPath string) (repo.Datastore, error) {
	token, source, err := c.token(repoPath)
	if err != nil {
		return nil, err
	}
	return datastore.New(datastore.Config{
		Endpoint:    c.Endpoint,
		Namespace:   c.Namespace,
		Token:       token,
		TokenSource: source,
		Timeout:     c.Timeout,
	})
}

// token reads the write token and says where it came from.
func (c *Config) token(repoPath string) (token, source string, err error) {
	switch {
	case c.TokenFile != "":
		path := c.TokenFile
		if !filepath.IsAbs(path) {
			path = filepath.Join(repoPath, path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return "", "", fmt.Errorf("garageipfs datastore: cannot read token_file: %w", err)
		}
		token = strings.TrimSpace(string(b))
		if token == "" {
			return "", "", fmt.Errorf("garageipfs datastore: token_file %s is empty", path)
		}
		return token, "token_file " + path, nil
	case c.TokenEnv != "":
		token = strings.TrimSpace(os.Getenv(c.TokenEnv))
		if token == "" {
			return "", "", fmt.Errorf("garageipfs datastore: the environment variable %s (token_env) is not set", c.TokenEnv)
		}
		return token, "environment variable " + c.TokenEnv, nil
	}
	return "", "", nil
}
