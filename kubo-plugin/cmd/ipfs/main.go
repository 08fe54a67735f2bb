// Command ipfs is kubo with the garage-ipfs datastore plugin preloaded: the
// same `ipfs` command, built from kubo's own module, whose repos can keep
// their blocks in a Garage cluster (datastore type "garageipfs").
package main

import (
	"os"

	"github.com/ipfs/kubo/cmd/ipfs/kubo"
	"github.com/ipfs/kubo/plugin/loader"

	garageipfs "garage-ipfs/kubo-plugin/plugin"
)

func main() {
	os.Exit(kubo.Start(kubo.BuildEnv(func(l *loader.PluginLoader) error {
		for _, p := range garageipfs.Plugins {
			if err := l.Load(p); err != nil {
				return err
			}
		}
		return nil
	})))
}
