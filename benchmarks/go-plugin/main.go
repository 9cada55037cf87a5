// Command go-mems-only is the Go yardstick of the end-to-end benchmark: an NRI plugin on
// containerd/nri's pkg/stub that only sets cpuset.mems, deciding exactly as
// benchmarks/minimal_plugin.py does: every container of a Guaranteed pod, the QoS class read
// from the pod's cgroup parent (else the container's cgroups path), gets -mems.
//
// It runs external (-socket) or pre-launched by the runtime from its plugin directory, where
// the stub takes the connection, name and index from the environment.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"syscall"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
)

// kubelet's QoS class in cgroup names, as nri_plugin/workload.py's qos_from_cgroup reads it.
var (
	kubepods   = regexp.MustCompile(`(?:^|[/:._-])kubepods(?:[/:._-]|$)`)
	burstable  = regexp.MustCompile(`(?:^|[/:._-])burstable(?:[/:._-]|$)`)
	besteffort = regexp.MustCompile(`(?:^|[/:._-])besteffort(?:[/:._-]|$)`)
)

func guaranteed(cgroup string) (qos bool, known bool) {
	if cgroup == "" || !kubepods.MatchString(cgroup) {
		return false, false
	}
	return !besteffort.MatchString(cgroup) && !burstable.MatchString(cgroup), true
}

type memsOnly struct{ mems string }

// CreateContainer is the only request subscribed to, as for the Python plugin.
func (p *memsOnly) CreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) (
	*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	qos, known := guaranteed(pod.GetLinux().GetCgroupParent())
	if !known {
		qos, _ = guaranteed(ctr.GetLinux().GetCgroupsPath())
	}
	if !qos {
		return nil, nil, nil
	}
	adjust := &api.ContainerAdjustment{}
	adjust.SetLinuxCPUSetMems(p.mems)
	return adjust, nil, nil
}

func main() {
	socket := flag.String("socket", api.DefaultSocketPath, "NRI socket to connect to")
	name := flag.String("name", "go-mems-only", "plugin name (unless the runtime launched us)")
	index := flag.String("index", "92", "plugin index (unless the runtime launched us)")
	mems := flag.String("mems", "0", "cpuset.mems for the containers of Guaranteed pods")
	flag.Parse()

	opts := []stub.Option{stub.WithSocketPath(*socket)}
	// A pre-launched plugin's name and index come from the environment; setting them twice
	// is an error in the stub.
	if os.Getenv(api.PluginNameEnvVar) == "" {
		opts = append(opts, stub.WithPluginName(*name))
	}
	if os.Getenv(api.PluginIdxEnvVar) == "" {
		opts = append(opts, stub.WithPluginIdx(*index))
	}
	s, err := stub.New(&memsOnly{mems: *mems}, opts...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-mems-only: %v\n", err)
		os.Exit(1)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	go func() { <-ctx.Done(); s.Stop() }()
	if err := s.Run(ctx); err != nil && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "go-mems-only: %v\n", err)
		os.Exit(1)
	}
}
