// Command ipfs-s3 is kubo with go-ds-s3 preloaded, built the same way as
// garage-ipfs's own kubo (kubo-plugin/cmd/ipfs): kubo's entry point with
// one more datastore plugin. The benchmark (`garage-ipfs bench-kubo`) runs
// it against the same cluster's S3 API, as go-ds-s3's users do.
package main

import (
	"os"

	s3plugin "github.com/ipfs/go-ds-s3/plugin"
	"github.com/ipfs/kubo/cmd/ipfs/kubo"
	"github.com/ipfs/kubo/plugin/loader"
)

func main() {
	os.Exit(kubo.Start(kubo.BuildEnv(func(l *loader.PluginLoader) error {
		for _, p := range s3plugin.Plugins {
			if err := l.Load(p); err != nil {
				return err
			}
		}
		return nil
	})))
}
