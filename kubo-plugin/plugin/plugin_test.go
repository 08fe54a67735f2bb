package plugin

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDiskSpecHoldsIdentityOnly(t *testing.T) {
	c, err := ParseConfig(map[string]any{
		"type": "garageipfs", "namespace": "kubo-a", "endpoint": "10.0.0.5:3982",
		"token_file": "token", "timeout": "5s",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"type": "garageipfs", "namespace": "kubo-a"}
	if got := map[string]any(c.DiskSpec()); !reflect.DeepEqual(got, want) {
		t.Fatalf("disk spec %v, want %v", got, want)
	}
	if c.(*Config).Timeout != 5*time.Second {
		t.Fatalf("timeout %v", c.(*Config).Timeout)
	}
}

func TestBadSpecsAreRefused(t *testing.T) {
	for _, c := range []struct {
		params map[string]any
		want   string
	}{
		{map[string]any{"type": "garageipfs"}, "'namespace' is missing"},
		{map[string]any{"type": "garageipfs", "namespace": "a", "token_fiel": "x"}, `unknown field "token_fiel"`},
		{map[string]any{"type": "garageipfs", "namespace": "a", "token_file": "x", "token_env": "Y"}, "not both"},
		{map[string]any{"type": "garageipfs", "namespace": "a", "timeout": "soon"}, "not a positive duration"},
		{map[string]any{"type": "garageipfs", "namespace": 7}, `"namespace" must be a string`},
	} {
		_, err := ParseConfig(c.params)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.params, err, c.want)
		}
	}
}

func TestTokenFromFileOrEnvironment(t *testing.T) {
	repo := t.TempDir()
	os.WriteFile(filepath.Join(repo, "token"), []byte("from-file\n"), 0o600)
	c := &Config{Namespace: "a", TokenFile: "token"}
	tok, src, err := c.token(repo)
	if err != nil || tok != "from-file" || src != "token_file "+filepath.Join(repo, "token") {
		t.Fatalf("file: %q %q %v", tok, src, err)
	}
	t.Setenv("GI_TEST_TOKEN", "from-env")
	c = &Config{Namespace: "a", TokenEnv: "GI_TEST_TOKEN"}
	if tok, src, err = c.token(repo); err != nil || tok != "from-env" || src != "environment variable GI_TEST_TOKEN" {
		t.Fatalf("env: %q %q %v", tok, src, err)
	}
	c = &Config{Namespace: "a", TokenEnv: "GI_TEST_UNSET"}
	if _, _, err = c.token(repo); err == nil || !strings.Contains(err.Error(), "GI_TEST_UNSET (token_env) is not set") {
		t.Fatalf("unset env: %v", err)
	}
	c = &Config{Namespace: "a", TokenFile: "missing"}
	if _, err = c.Create(repo); err == nil || !strings.Contains(err.Error(), "cannot read token_file") {
		t.Fatalf("missing file: %v", err)
	}
}
