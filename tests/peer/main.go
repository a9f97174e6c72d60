// Command peer runs the Go library sig-storage-lib-external-provisioner (v13)
// with a backend that does no I/O, so that the side-by-side benchmark can
// compare the two engines and nothing else. Provision answers a hostPath PV at
// once; Delete answers nil. On SIGTERM/SIGINT it prints one JSON line with the
// API requests this process made (counted at its HTTP transport; "writes"
// includes the events' "event_writes") and the backend calls it received,
// then exits.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

// counts of API requests, split the way the Rust side splits them.
type counts struct {
	Reads, Writes, EventWrites, Watches, Provisions, Deletes atomic.Int64
}

var c counts

type countingTransport struct{ next http.RoundTripper }

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	switch {
	case r.Method == http.MethodGet && strings.Contains(r.URL.RawQuery, "watch=true"):
		c.Watches.Add(1)
	case r.Method == http.MethodGet:
		c.Reads.Add(1)
	default:
		c.Writes.Add(1)
		if strings.Contains(r.URL.Path, "/events") {
			c.EventWrites.Add(1)
		}
	}
	return t.next.RoundTrip(r)
}

// noopBackend is the storage: nothing to create, nothing to remove.
type noopBackend struct{}

func (noopBackend) Provision(_ context.Context, o controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	c.Provisions.Add(1)
	reclaim := v1.PersistentVolumeReclaimDelete
	if o.StorageClass.ReclaimPolicy != nil {
		reclaim = *o.StorageClass.ReclaimPolicy
	}
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: o.PVName},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: reclaim,
			AccessModes:                   o.PVC.Spec.AccessModes,
			MountOptions:                  o.StorageClass.MountOptions,
			Capacity: v1.ResourceList{
				v1.ResourceStorage: o.PVC.Spec.Resources.Requests[v1.ResourceStorage],
			},
			PersistentVolumeSource: v1.PersistentVolumeSource{
				HostPath: &v1.HostPathVolumeSource{Path: "/noop/" + o.PVName},
			},
		},
	}
	return pv, controller.ProvisioningFinished, nil
}

func (noopBackend) Delete(context.Context, *v1.PersistentVolume) error {
	c.Deletes.Add(1)
	return nil
}

func main() {
	name := flag.String("provisioner", "peer.bench/noop", "provisioner name (StorageClass.provisioner)")
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig path")
	workers := flag.Int("workers", controller.DefaultThreadiness, "controller.Threadiness (library default 4)")
	qps := flag.Float64("kube-api-qps", 5, "client QPS (client-go default 5)")
	burst := flag.Int("kube-api-burst", 10, "client burst (client-go default 10)")
	leaderElect := flag.Bool("leader-elect", false, "run leader election (Lease in --leader-elect-namespace)")
	leNamespace := flag.String("leader-elect-namespace", "default", "namespace of the Lease")
	countsFile := flag.String("counts-file", "", "also write the JSON counts line to this file on exit")
	addFinalizer := flag.Bool("add-finalizer", false, "controller.AddFinalizer: put external-provisioner.volume.kubernetes.io/finalizer on Delete-policy PVs (library default false)")
	klog.InitFlags(nil)
	flag.Parse()

	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer: kubeconfig:", err)
		os.Exit(2)
	}
	cfg.QPS = float32(*qps)
	cfg.Burst = *burst
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return countingTransport{rt} })
	client := kubernetes.NewForConfigOrDie(cfg)

	ctx, cancel := context.WithCancel(context.Background())
	pc := controller.NewProvisionController(ctx, client, *name, noopBackend{},
		controller.Threadiness(*workers),
		controller.LeaderElection(*leaderElect),
		controller.LeaderElectionNamespace(*leNamespace),
		controller.AddFinalizer(*addFinalizer),
	)

	done := make(chan struct{})
	go func() { pc.Run(ctx); close(done) }()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	cancel()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
	}
	line, _ := json.Marshal(map[string]int64{
		"reads": c.Reads.Load(), "writes": c.Writes.Load(), "event_writes": c.EventWrites.Load(),
		"watches":         c.Watches.Load(),
		"provision_calls": c.Provisions.Load(), "delete_calls": c.Deletes.Load(),
	})
	fmt.Println(string(line))
	if *countsFile != "" {
		_ = os.WriteFile(*countsFile, append(line, '\n'), 0o644)
	}
	os.Exit(0)
}
