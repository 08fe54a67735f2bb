package datastore

// Unit tests of the datastore layer against an in-memory gRPC server that
// speaks the same protocol. The real daemon, cluster and kubo are tested
// from the Rust integration tests (tests/kubo.rs).

import (
	"context"
	"errors"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/boxo/datastore/dshelp"
	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	mh "github.com/multiformats/go-multihash"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "garage-ipfs/kubo-plugin/pb"
)

const token = "s3cret-token"

// memServer keeps blocks by multihash, like the daemon.
type memServer struct {
	pb.UnimplementedBlockstoreServer
	mu     sync.Mutex
	blocks map[string][]byte // multihash bytes -> data
	ns     string
	delay  time.Duration // before every answer
	seen   []string      // CIDs received, in order
	opens  int
}

func newMemServer() *memServer {
	return &memServer{blocks: map[string][]byte{}, ns: "kubo-test"}
}

func (s *memServer) check(ctx context.Context, ns string, write bool) error {
	if s.delay > 0 {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if ns != s.ns {
		return status.Error(codes.NotFound, "namespace is not registered")
	}
	if !write {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) != 1 || v[0] != "Bearer "+token {
		return status.Error(codes.Unauthenticated, "missing or wrong bearer token")
	}
	return nil
}

func (s *memServer) key(c string) (string, error) {
	parsed, err := cid.Decode(c)
	if err != nil {
		return "", status.Error(codes.InvalidArgument, err.Error())
	}
	s.mu.Lock()
	s.seen = append(s.seen, c)
	s.mu.Unlock()
	return string(parsed.Hash()), nil
}

func (s *memServer) store(r *pb.PutRequest) error {
	k, err := s.key(r.Cid)
	if err != nil {
		return err
	}
	parsed, _ := cid.Decode(r.Cid)
	sum, _ := mh.Sum(r.Data, parsed.Prefix().MhType, -1)
	if string(sum) != k {
		return status.Error(codes.InvalidArgument, "data does not match its CID")
	}
	s.mu.Lock()
	s.blocks[k] = r.Data
	s.mu.Unlock()
	return nil
}

func (s *memServer) Open(ctx context.Context, r *pb.OpenRequest) (*pb.OpenResponse, error) {
	s.mu.Lock()
	s.opens++
	s.mu.Unlock()
	if err := s.check(ctx, r.Namespace, false); err != nil {
		return nil, err
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) > 0 {
		if err := s.check(ctx, r.Namespace, true); err != nil {
			return nil, err
		}
		return &pb.OpenResponse{Writable: true, Version: "test"}, nil
	}
	return &pb.OpenResponse{Writable: false, Version: "test"}, nil
}

func (s *memServer) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if err := s.check(ctx, r.Namespace, true); err != nil {
		return nil, err
	}
	return &pb.PutResponse{Cid: r.Cid, Size: uint64(len(r.Data))}, s.store(r)
}

func (s *memServer) PutMany(stream grpc.ClientStreamingServer[pb.PutRequest, pb.PutManyResponse]) error {
	out := &pb.PutManyResponse{}
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(out)
		}
		if err != nil {
			return err
		}
		if err := s.check(stream.Context(), r.Namespace, true); err != nil {
			return err
		}
		if err := s.store(r); err != nil {
			out.Failed = append(out.Failed, &pb.PutFailure{Cid: r.Cid, Error: status.Convert(err).Message()})
		} else {
			out.Stored++
		}
	}
}

func (s *memServer) Get(ctx context.Context, r *pb.GetRequest) (*pb.GetResponse, error) {
	if err := s.check(ctx, r.Namespace, false); err != nil {
		return nil, err
	}
	k, err := s.key(r.Cid)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	data, ok := s.blocks[k]
	if !ok {
		return nil, status.Error(codes.NotFound, "block is not stored")
	}
	return &pb.GetResponse{Cid: r.Cid, Found: true, Data: data}, nil
}

func (s *memServer) Has(ctx context.Context, r *pb.HasRequest) (*pb.HasResponse, error) {
	if err := s.check(ctx, r.Namespace, false); err != nil {
		return nil, err
	}
	k, err := s.key(r.Cid)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.blocks[k]
	return &pb.HasResponse{Has: ok}, nil
}

func (s *memServer) GetSize(ctx context.Context, r *pb.GetSizeRequest) (*pb.GetSizeResponse, error) {
	got, err := s.Get(ctx, &pb.GetRequest{Namespace: r.Namespace, Cid: r.Cid})
	if err != nil {
		return nil, err
	}
	return &pb.GetSizeResponse{Size: uint64(len(got.Data))}, nil
}

func (s *memServer) Delete(ctx context.Context, r *pb.DeleteRequest) (*pb.DeleteResponse, error) {
	if err := s.check(ctx, r.Namespace, true); err != nil {
		return nil, err
	}
	k, err := s.key(r.Cid)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.blocks[k]
	delete(s.blocks, k)
	return &pb.DeleteResponse{Deleted: ok}, nil
}

func (s *memServer) List(r *pb.ListRequest, stream grpc.ServerStreamingServer[pb.ListResponse]) error {
	if err := s.check(stream.Context(), r.Namespace, false); err != nil {
		return err
	}
	s.mu.Lock()
	var items []*pb.ListResponse
	for k, v := range s.blocks {
		c := cid.NewCidV1(cid.Raw, mh.Multihash(k))
		items = append(items, &pb.ListResponse{Multihash: []byte(k), Cid: c.String(), Size: uint64(len(v))})
	}
	s.mu.Unlock()
	for _, it := range items {
		if err := stream.Send(it); err != nil {
			return err
		}
	}
	return nil
}

func (s *memServer) Stat(ctx context.Context, r *pb.StatRequest) (*pb.StatResponse, error) {
	if err := s.check(ctx, r.Namespace, false); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := &pb.StatResponse{}
	for _, v := range s.blocks {
		out.Blocks++
		out.Bytes += uint64(len(v))
	}
	return out, nil
}

// serve runs the server on addr ("127.0.0.1:0" for any port) until the
// test ends or stop is called.
func serve(t *testing.T, s *memServer, addr string) (string, func()) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	pb.RegisterBlockstoreServer(g, s)
	go g.Serve(lis)
	var once sync.Once
	stop := func() { once.Do(g.Stop) }
	t.Cleanup(stop)
	return lis.Addr().String(), stop
}

func open(t *testing.T, cfg Config) *Datastore {
	t.Helper()
	if cfg.Namespace == "" {
		cfg.Namespace = "kubo-test"
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// block returns a block and its kubo datastore key.
func block(data string) (ds.Key, []byte) {
	sum, _ := mh.Sum([]byte(data), mh.SHA2_256, -1)
	return dshelp.MultihashToDsKey(sum), []byte(data)
}

func TestKeysTravelAsRawCidsOfTheirMultihash(t *testing.T) {
	s := newMemServer()
	addr, _ := serve(t, s, "127.0.0.1:0")
	d := open(t, Config{Endpoint: addr, Token: token})
	ctx := context.Background()

	key, data := block("hello")
	if !strings.HasPrefix(key.String(), "/CIQ") {
		t.Fatalf("kubo's key form is /CIQ...: %s", key)
	}
	if err := d.Put(ctx, key, data); err != nil {
		t.Fatal(err)
	}
	got, err := d.Get(ctx, key)
	if err != nil || string(got) != "hello" {
		t.Fatalf("get: %q %v", got, err)
	}
	sum, _ := mh.Sum(data, mh.SHA2_256, -1)
	want := cid.NewCidV1(cid.Raw, sum).String()
	if s.seen[0] != want {
		t.Fatalf("sent %s, want the raw CIDv1 %s", s.seen[0], want)
	}
	size, err := d.GetSize(ctx, key)
	if err != nil || size != 5 {
		t.Fatalf("size: %d %v", size, err)
	}
	if has, err := d.Has(ctx, key); err != nil || !has {
		t.Fatalf("has: %v %v", has, err)
	}
}

func TestAbsentBlocksAreErrNotFound(t *testing.T) {
	addr, _ := serve(t, newMemServer(), "127.0.0.1:0")
	d := open(t, Config{Endpoint: addr, Token: token})
	ctx := context.Background()
	key, _ := block("never stored")
	if _, err := d.Get(ctx, key); !errors.Is(err, ds.ErrNotFound) {
		t.Fatalf("get: %v", err)
	}
	if _, err := d.GetSize(ctx, key); !errors.Is(err, ds.ErrNotFound) {
		t.Fatalf("get-size: %v", err)
	}
	if has, err := d.Has(ctx, key); err != nil || has {
		t.Fatalf("has: %v %v", has, err)
	}
	if err := d.Delete(ctx, key); err != nil {
		t.Fatalf("delete of an absent block: %v", err)
	}
}

func TestKeysThatAreNotBlocks(t *testing.T) {
	s := newMemServer()
	addr, _ := serve(t, s, "127.0.0.1:0")
	d := open(t, Config{Endpoint: addr, Token: token})
	ctx := context.Background()
	for _, k := range []string{"/local/filesroot", "/not-base32!", "/CIQA"} {
		key := ds.NewKey(k)
		if err := d.Put(ctx, key, []byte("x")); err == nil || !strings.Contains(err.Error(), "not a block key") {
			t.Errorf("put %s: %v", k, err)
		}
		if _, err := d.Get(ctx, key); !errors.Is(err, ds.ErrNotFound) {
			t.Errorf("get %s: %v", k, err)
		}
	}
	if len(s.seen) != 0 {
		t.Fatalf("non-block keys reached the server: %v", s.seen)
	}
}

func TestDataThatDoesNotMatchItsKeyIsRefused(t *testing.T) {
	addr, _ := serve(t, newMemServer(), "127.0.0.1:0")
	d := open(t, Config{Endpoint: addr, Token: token})
	key, _ := block("one")
	err := d.Put(context.Background(), key, []byte("two"))
	if err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("put: %v", err)
	}
}

func TestQueryListsKeysInKuboFormWithSizes(t *testing.T) {
	addr, _ := serve(t, newMemServer(), "127.0.0.1:0")
	d := open(t, Config{Endpoint: addr, Token: token})
	ctx := context.Background()
	want := map[string]int{}
	for _, s := range []string{"a", "bb", "ccc"} {
		k, v := block(s)
		want[k.String()] = len(v)
		if err := d.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	res, err := d.Query(ctx, query.Query{Prefix: "/", KeysOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	all, err := res.Rest()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 {
		t.Fatalf("listed %d, want 3", len(all))
	}
	for _, e := range all {
		if want[e.Key] != e.Size {
			t.Errorf("%s: size %d, want %d", e.Key, e.Size, want[e.Key])
		}
	}

	// Values, ordered, paged.
	res, _ = d.Query(ctx, query.Query{Orders: []query.Order{query.OrderByKey{}}, Offset: 1, Limit: 1})
	page, err := res.Rest()
	if err != nil || len(page) != 1 || len(page[0].Value) != page[0].Size {
		t.Fatalf("page: %v %v", page, err)
	}
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if page[0].Key != keys[1] || want[page[0].Key] != len(page[0].Value) {
		t.Fatalf("page: got %s, want the second key in order, %s", page[0].Key, keys[1])
	}

	// A prefix below the root names nothing of ours.
	res, _ = d.Query(ctx, query.Query{Prefix: "/CIQ", KeysOnly: true})
	if none, _ := res.Rest(); len(none) != 0 {
		t.Fatalf("prefix /CIQ: %v", none)
	}
}

func TestBatchCommitNamesTheBlocksThatFailed(t *testing.T) {
	s := newMemServer()
	addr, _ := serve(t, s, "127.0.0.1:0")
	d := open(t, Config{Endpoint: addr, Token: token})
	ctx := context.Background()

	gone, gv := block("to delete")
	if err := d.Put(ctx, gone, gv); err != nil {
		t.Fatal(err)
	}
	b, _ := d.Batch(ctx)
	good, g := block("good")
	bad, _ := block("bad")
	bad2, _ := block("bad too")
	flip, fv := block("put then deleted")
	b.Put(ctx, good, g)
	b.Put(ctx, bad, []byte("not the bytes of bad"))
	b.Put(ctx, bad2, []byte("not the bytes of bad too"))
	b.Put(ctx, flip, fv)
	b.Delete(ctx, flip)
	b.Delete(ctx, gone)
	err := b.Commit(ctx)
	if err == nil || !strings.Contains(err.Error(), "2 of 3 blocks not stored") ||
		!strings.Contains(err.Error(), bad.String()) || !strings.Contains(err.Error(), bad2.String()) ||
		strings.Contains(err.Error(), good.String()) {
		t.Fatalf("commit: %v", err)
	}
	// One reason, said once, with the keys it applies to.
	if n := strings.Count(err.Error(), "does not match"); n != 1 {
		t.Fatalf("the reason appears %d times: %v", n, err)
	}
	if has, _ := d.Has(ctx, good); !has {
		t.Fatal("the good block of the batch is not stored")
	}
	if has, _ := d.Has(ctx, flip); has {
		t.Fatal("the last operation on a key should win (delete)")
	}

	// A batch without failures commits its deletes too.
	b, _ = d.Batch(ctx)
	b.Delete(ctx, gone)
	b.Delete(ctx, good)
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if has, _ := d.Has(ctx, good); has {
		t.Fatal("batch delete")
	}
}

func TestDiskUsageIsTheNamespacesBytes(t *testing.T) {
	addr, _ := serve(t, newMemServer(), "127.0.0.1:0")
	d := open(t, Config{Endpoint: addr, Token: token})
	ctx := context.Background()
	for _, s := range []string{"1234", "123456"} {
		k, v := block(s)
		d.Put(ctx, k, v)
	}
	du, err := d.DiskUsage(ctx)
	if err != nil || du != 10 {
		t.Fatalf("disk usage %d %v", du, err)
	}
	var _ ds.PersistentDatastore = d
}

func TestBadSetUpSaysWhatIsWrong(t *testing.T) {
	addr, _ := serve(t, newMemServer(), "127.0.0.1:0")
	key, v := block("x")
	ctx := context.Background()
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"unknown namespace", Config{Endpoint: addr, Token: token, Namespace: "typo"}, "garage-ipfs namespace create typo"},
		{"wrong token", Config{Endpoint: addr, Token: "wrong-token", TokenSource: "token_file /repo/t"}, "refused the write token from token_file /repo/t"},
		{"no token", Config{Endpoint: addr}, "refuses writes without a token"},
	}
	for _, c := range cases {
		d := open(t, c.cfg)
		err := d.Put(ctx, key, v)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", c.name, err)
		}
		if err != nil && strings.Contains(err.Error(), "wrong-token") {
			t.Errorf("%s: the error shows the token: %v", c.name, err)
		}
	}
}

func TestDaemonDownFailsFastSayingSo(t *testing.T) {
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	d := open(t, Config{Endpoint: addr, Token: token, Timeout: 5 * time.Second})
	start := time.Now()
	_, err := d.Has(context.Background(), ds.NewKey("/CIQA4T3TD3BP3C2M3GXCGRCRTCCHV7XSGAZPZJOAOHLPOI6IQR3H6YQ"))
	if err == nil || !strings.Contains(err.Error(), "cannot reach the daemon "+addr) {
		t.Fatalf("has: %v", err)
	}
	// Refused at once, not waited out: the set-up check does not retry.
	if took := time.Since(start); took > time.Second {
		t.Fatalf("took %s to report a daemon that is down (deadline 5s)", took)
	}
}

func TestEveryCallHasADeadline(t *testing.T) {
	s := newMemServer()
	addr, _ := serve(t, s, "127.0.0.1:0")
	const timeout = 200 * time.Millisecond
	d := open(t, Config{Endpoint: addr, Token: token, Timeout: timeout})
	ctx := context.Background()
	key, v := block("slow")
	if err := d.Put(ctx, key, v); err != nil { // opens while the server is quick
		t.Fatal(err)
	}
	s.mu.Lock()
	s.delay = 10 * time.Second
	s.mu.Unlock()
	other, w := block("other")
	calls := []struct {
		name     string
		deadline time.Duration
		call     func() error
	}{
		{"get", timeout, func() error { _, err := d.Get(ctx, key); return err }},
		{"has", timeout, func() error { _, err := d.Has(ctx, key); return err }},
		{"get-size", timeout, func() error { _, err := d.GetSize(ctx, key); return err }},
		{"put", timeout, func() error { return d.Put(ctx, other, w) }},
		{"delete", timeout, func() error { return d.Delete(ctx, key) }},
		{"disk-usage", 10 * timeout, func() error { _, err := d.DiskUsage(ctx); return err }},
		{"query", timeout, func() error {
			res, _ := d.Query(ctx, query.Query{KeysOnly: true})
			_, err := res.Rest()
			return err
		}},
		{"batch", timeout, func() error {
			b, _ := d.Batch(ctx)
			_ = b.Put(ctx, other, w)
			return b.Commit(ctx)
		}},
	}
	for _, c := range calls {
		start := time.Now()
		err := c.call()
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), "within "+c.deadline.String()) {
			t.Errorf("%s: %v", c.name, err)
		}
		if took > c.deadline+time.Second {
			t.Errorf("%s took %s with a %s deadline", c.name, took, c.deadline)
		}
	}
}

func TestReconnectsAfterTheDaemonRestarts(t *testing.T) {
	s := newMemServer()
	addr, stop := serve(t, s, "127.0.0.1:0")
	d := open(t, Config{Endpoint: addr, Token: token, Timeout: 10 * time.Second})
	ctx := context.Background()
	key, v := block("survives")
	if err := d.Put(ctx, key, v); err != nil {
		t.Fatal(err)
	}
	stop()
	// The daemon comes back on the same address a moment later; a call
	// made meanwhile waits for it rather than failing.
	done := make(chan error, 1)
	go func() {
		_, err := d.Get(ctx, key)
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	serve(t, s, addr)
	if err := <-done; err != nil {
		t.Fatalf("get across the restart: %v", err)
	}
	if s.opens != 1 {
		t.Fatalf("the set-up was checked %d times, want once", s.opens)
	}
}
