/* SPDX-License-Identifier: BSD-3-Clause
 *
 * Kept writes and the repair (kept.h states the rule and the
 * invariants).  The tree is a treap by offset: kept writes never
 * overlap, so a range's writes are found by splitting at its ends.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "doubt.h"
#include "host.h"
#include "kept.h"

/* Data shared by the kept writes a newer write split. */
struct blob {
  _Atomic int refs;
  uint64_t size;                /* what it holds */
  int class;                    /* of the pool (below), or -1 */
  struct blob *next;            /* in the pool */
  unsigned char bytes[] __attribute__ ((aligned (16)));
};

struct kept {
  uint64_t offset, end;         /* [offset, end) */
  struct blob *blob;            /* NULL: zeroes */
  uint64_t blob_off;            /* where offset's byte is in blob */
  uint32_t flags;               /* a zero's LIBNBD_CMD_FLAG_NO_HOLE */
  uint64_t seq;                 /* when it was kept, in its disk */
  struct fate *fate;
  struct owner *owner;
  struct kept *left, *right;    /* the disk's tree */
  uint32_t prio;
  struct kept *prev, *next;     /* its fate's list */
};

/* What counts against repair-memory, process-wide: kept data, and the
 * records themselves (a zero keeps no data, but is a record).
 */
static _Atomic int64_t total;
/* Fates that keep something, process-wide: repair-memory's sharers. */
static _Atomic int keeping;

/* A repair reads back this much at most at once. */
#define REPAIR_BATCH (1024 * 1024)
/* and looks at this many kept writes at most at once. */
#define REPAIR_PIECES 256

/* ---- Blobs
 *
 * Blobs let go of are kept for reuse, by size class (powers of two from
 * 4 KiB), up to half of repair-memory: a flush lets go of most of what is
 * kept at once, and memory handed back to the system would be faulted in
 * (zeroed) again by the next writes, which cost as much as copying them.
 * The pool and the kept data together stay within half the bound plus
 * what arrives during a flush.
 */
#define POOL_MIN_SHIFT 12
#define POOL_CLASSES 14         /* 4 KiB to 32 MiB */

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct blob *pool[POOL_CLASSES];
static int64_t pooled;          /* bytes in the pool, under pool_lock */

/* The class of a blob holding count bytes, or -1 (too large). */
static int
class_of (uint64_t count)
{
  int c = 0;

  while (c < POOL_CLASSES && ((uint64_t) 1 << (POOL_MIN_SHIFT + c)) < count)
    ++c;
  return c < POOL_CLASSES ? c : -1;
}

/* The bytes a blob of class c holding count bytes takes. */
static uint64_t
class_bytes (int c, uint64_t count)
{
  return c >= 0 ? (uint64_t) 1 << (POOL_MIN_SHIFT + c) : count;
}

static uint64_t
capacity (const struct blob *b)
{
  return class_bytes (b->class, b->size);
}

/* Copies from this size on bypass the CPU's caches (below). */
#define STREAM_MIN (64 * 1024)

/* Copy a write's data into a blob.  Only a repair reads it again, if
 * ever: a large copy goes around the CPU's caches (streaming stores),
 * leaving them to the data on its way to the server, and saving the
 * read of the destination that an ordinary store begins with.
 */
static void
copy_in (unsigned char *dst, const unsigned char *src, uint64_t count)
{
  uint64_t i = 0;

#ifdef __SSE2__
  if (count >= STREAM_MIN) {
    for (; i + 64 <= count; i += 64) {
      __m128i a = _mm_loadu_si128 ((const __m128i *) (src + i));
      __m128i b = _mm_loadu_si128 ((const __m128i *) (src + i + 16));
      __m128i c = _mm_loadu_si128 ((const __m128i *) (src + i + 32));
      __m128i d = _mm_loadu_si128 ((const __m128i *) (src + i + 48));

      _mm_stream_si128 ((__m128i *) (dst + i), a);
      _mm_stream_si128 ((__m128i *) (dst + i + 16), b);
      _mm_stream_si128 ((__m128i *) (dst + i + 32), c);
      _mm_stream_si128 ((__m128i *) (dst + i + 48), d);
    }
    /* Streaming stores are weakly ordered: done before the blob is
     * published under a lock.
     */
    _mm_sfence ();
  }
#endif
  memcpy (dst + i, src + i, count - i);
}

struct blob *
blob_copy (const void *buf, uint64_t count)
{
  struct blob *b = NULL;
  int64_t limit = settings.repair_memory;
  int c = class_of (count);
  uint64_t cap = class_bytes (c, count);

  if (limit <= 0 || atomic_load (&total) + (int64_t) cap > 2 * limit)
    return NULL;
  if (c >= 0) {
    pthread_mutex_lock (&pool_lock);
    if ((b = pool[c]) != NULL) {
      pool[c] = b->next;
      pooled -= cap;
    }
    pthread_mutex_unlock (&pool_lock);
  }
  if (b == NULL && (b = malloc (sizeof *b + cap)) == NULL)
    return NULL;
  atomic_init (&b->refs, 1);
  b->size = count;
  b->class = c;
  copy_in (b->bytes, buf, count);
  atomic_fetch_add (&total, (int64_t) cap);
  return b;
}

void
blob_put (struct blob *b)
{
  uint64_t cap;

  if (b == NULL || atomic_fetch_sub (&b->refs, 1) != 1)
    return;
  cap = capacity (b);
  atomic_fetch_sub (&total, (int64_t) cap);
  if (b->class >= 0 && (int64_t) cap <= settings.repair_memory / 2) {
    struct blob *evicted = NULL, *x;
    int c;

    pthread_mutex_lock (&pool_lock);
    /* The sizes written now are those worth keeping: blobs of other
     * sizes make room.
     */
    for (c = 0; c < POOL_CLASSES &&
           pooled + (int64_t) cap > settings.repair_memory / 2; ++c) {
      while (c != b->class && (x = pool[c]) != NULL &&
             pooled + (int64_t) cap > settings.repair_memory / 2) {
        pool[c] = x->next;
        pooled -= capacity (x);
        x->next = evicted;
        evicted = x;
      }
    }
    if (pooled + (int64_t) cap <= settings.repair_memory / 2) {
      b->next = pool[b->class];
      pool[b->class] = b;
      pooled += cap;
      b = NULL;
    }
    pthread_mutex_unlock (&pool_lock);
    for (; evicted != NULL; evicted = x) {
      x = evicted->next;
      free (evicted);
    }
  }
  free (b);
}

/* ---- The treap */

static uint32_t
random_prio (void)
{
  static __thread uint32_t x = 2463534242u;

  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return x;
}

/* Split t into the writes with offset < key (*l) and the others (*r). */
static void
split (struct kept *t, uint64_t key, struct kept **l, struct kept **r)
{
  if (t == NULL) {
    *l = *r = NULL;
    return;
  }
  if (t->offset < key) {
    split (t->right, key, &t->right, r);
    *l = t;
  }
  else {
    split (t->left, key, l, &t->left);
    *r = t;
  }
}

/* Every write of l is before every write of r. */
static struct kept *
merge (struct kept *l, struct kept *r)
{
  if (l == NULL)
    return r;
  if (r == NULL)
    return l;
  if (l->prio > r->prio) {
    l->right = merge (l->right, r);
    return l;
  }
  r->left = merge (l, r->left);
  return r;
}

static struct kept *
last_of (struct kept *t)
{
  while (t && t->right)
    t = t->right;
  return t;
}

/* Take t's last write out of t. */
static struct kept *
pop_last (struct kept **t)
{
  struct kept *n;

  while ((*t)->right)
    t = &(*t)->right;
  n = *t;
  *t = n->left;
  n->left = NULL;
  return n;
}

/* Insert n into t, where nothing overlaps it: down to where its
 * priority puts it, and the subtree there split around it.
 */
static struct kept *
insert (struct kept *t, struct kept *n)
{
  if (t == NULL)
    return n;
  if (n->prio > t->prio) {
    split (t, n->offset, &n->left, &n->right);
    return n;
  }
  if (n->offset < t->offset)
    t->left = insert (t->left, n);
  else
    t->right = insert (t->right, n);
  return t;
}

static void
tree_insert (struct disk *d, struct kept *n)
{
  n->left = n->right = NULL;
  n->prio = random_prio ();
  d->root = insert (d->root, n);
}

/* Whether anything kept overlaps [offset, end): the last write that
 * starts before end, if it reaches past offset.
 */
static int
overlaps (struct disk *d, uint64_t offset, uint64_t end)
{
  struct kept *t = d->root, *last = NULL;

  while (t) {
    if (t->offset < end) {
      last = t;
      t = t->right;
    }
    else
      t = t->left;
  }
  return last && last->end > offset;
}

static void
tree_remove (struct disk *d, struct kept *n)
{
  struct kept **t = &d->root;

  while (*t != n)
    t = n->offset < (*t)->offset ? &(*t)->left : &(*t)->right;
  *t = merge (n->left, n->right);
  n->left = n->right = NULL;
}

/* The first write with an end past offset (the one holding it, or the
 * next one).
 */
static struct kept *
first_from (struct disk *d, uint64_t offset)
{
  struct kept *t = d->root, *best = NULL;

  while (t) {
    if (t->end > offset) {
      best = t;
      t = t->left;
    }
    else
      t = t->right;
  }
  return best;
}

/* ---- A kept write's place on its fate and in the counts */

static int64_t
cost (const struct kept *n)
{
  return (int64_t) sizeof *n + (n->blob ? (int64_t) (n->end - n->offset) : 0);
}

/* Put n at the end of f's list (or after prev, a write it was split
 * from).
 */
static void
attach (struct fate *f, struct kept *n, struct kept *prev)
{
  struct disk *d = f->disk;

  n->fate = f;
  f->refs++;
  n->prev = prev ? prev : f->last;
  n->next = n->prev ? n->prev->next : f->first;
  if (n->prev)
    n->prev->next = n;
  else
    f->first = n;
  if (n->next)
    n->next->prev = n;
  else
    f->last = n;
  if (f->nr_kept++ == 0)
    atomic_fetch_add (&keeping, 1);
  f->kept_bytes += cost (n);
  if (f->failed)
    atomic_fetch_add (&d->orphans, 1);
}

/* Take n off its fate (which may go with it). */
static void
detach (struct kept *n)
{
  struct fate *f = n->fate;

  if (n->prev)
    n->prev->next = n->next;
  else
    f->first = n->next;
  if (n->next)
    n->next->prev = n->prev;
  else
    f->last = n->prev;
  n->prev = n->next = NULL;
  if (--f->nr_kept == 0)
    atomic_fetch_sub (&keeping, 1);
  f->kept_bytes -= cost (n);
  if (f->failed)
    atomic_fetch_sub (&f->disk->orphans, 1);
  n->fate = NULL;
  fate_unref (f);
}

/* Change n's range (attached: its fate's count follows). */
static void
resize (struct kept *n, uint64_t offset, uint64_t end)
{
  n->fate->kept_bytes -= cost (n);
  if (n->blob)
    n->blob_off += offset - n->offset;
  n->offset = offset;
  n->end = end;
  n->fate->kept_bytes += cost (n);
}

static void
free_kept (struct kept *n)
{
  if (n->fate)
    detach (n);
  owner_put (n->owner);
  blob_put (n->blob);
  atomic_fetch_sub (&total, (int64_t) sizeof *n);
  free (n);
}

static void
free_tree (struct kept *t)
{
  if (t == NULL)
    return;
  free_tree (t->left);
  free_tree (t->right);
  free_kept (t);
}

static struct kept *
new_kept (void)
{
  struct kept *n = calloc (1, sizeof *n);

  if (n)
    atomic_fetch_add (&total, (int64_t) sizeof *n);
  return n;
}

/* A copy of n for [offset, n->end), after n on its fate.  NULL on
 * ENOMEM.
 */
static struct kept *
split_off (struct kept *n, uint64_t offset)
{
  struct kept *r = new_kept ();

  if (r == NULL)
    return NULL;
  r->offset = n->offset;        /* resize moves blob_off from here */
  r->end = n->end;
  r->blob = n->blob;
  r->blob_off = n->blob_off;
  if (r->blob)
    atomic_fetch_add (&r->blob->refs, 1);
  r->flags = n->flags;
  r->seq = n->seq;
  r->owner = n->owner;
  owner_ref (r->owner);
  attach (n->fate, r, n);
  resize (r, offset, n->end);
  return r;
}

/* Let go of whatever is kept over [offset, end). */
static void
forget_range (struct disk *d, uint64_t offset, uint64_t end)
{
  struct kept *l, *m, *r, *n, *tail;

  split (d->root, offset, &l, &r);
  n = last_of (l);
  if (n && n->end > offset) {
    if (n->end <= end)
      resize (n, n->offset, offset);
    else if ((tail = split_off (n, end)) != NULL) {
      /* It held the whole range: its two ends stay. */
      resize (n, n->offset, offset);
      tail->prio = random_prio ();
      r = merge (tail, r);
    }
    else {
      /* Out of memory: the older write cannot be kept around the
       * range; it is let go of whole, and its client told of the loss.
       */
      n = pop_last (&l);
      atomic_store (&n->owner->lost, 1);
      free_kept (n);
    }
  }
  split (r, end, &m, &r);
  n = last_of (m);
  if (n && n->end > end) {      /* it reaches past the range */
    n = pop_last (&m);
    resize (n, end, n->end);
    r = merge (n, r);
  }
  free_tree (m);
  d->root = merge (l, r);
}

#ifdef NBDGO_WEAKEN_REPAIR
/* Weakened on purpose, for the history checker to catch: the kept data
 * of a range is its oldest write's, not its newest's.  Keep n only
 * where nothing is kept yet.
 */
static void
keep_gaps (struct fate *f, struct kept *n)
{
  struct disk *d = f->disk;
  struct kept *x, *g;
  uint64_t at = n->offset, end = n->end;

  while (at < end) {
    x = first_from (d, at);
    if (x && x->offset <= at) {
      at = x->end;
      continue;
    }
    if ((g = new_kept ()) == NULL)
      break;
    *g = *n;
    g->left = g->right = g->prev = g->next = NULL;
    if (g->blob) {
      atomic_fetch_add (&g->blob->refs, 1);
      g->blob_off += at - n->offset;
    }
    owner_ref (g->owner);
    g->offset = at;
    g->end = x && x->offset < end ? x->offset : end;
    attach (f, g, NULL);
    tree_insert (d, g);
    at = g->end;
  }
  n->fate = NULL;
  free_kept (n);
}
#endif

int
kept_write (struct fate *f, struct owner *o, const struct engine_request *req,
            struct blob *b)
{
  struct disk *d = f->disk;
  struct kept *n;
  int needs = req->op != ENGINE_TRIM && !(req->flags & LIBNBD_CMD_FLAG_FUA);

#ifndef NBDGO_WEAKEN_REPAIR
  /* Most writes overlap nothing kept: a look is cheaper than a split. */
  if (overlaps (d, req->offset, req->offset + req->count))
    forget_range (d, req->offset, req->offset + req->count);
#endif
  if (!needs) {
    blob_put (b);
    return 0;
  }
  if ((req->op == ENGINE_PWRITE && b == NULL) || (n = new_kept ()) == NULL) {
    blob_put (b);
    return -1;
  }
  n->offset = req->offset;
  n->end = req->offset + req->count;
  n->blob = b;
  n->flags = req->flags & LIBNBD_CMD_FLAG_NO_HOLE;
  n->seq = ++d->kept_seq;
  n->owner = o;
  owner_ref (o);
#ifdef NBDGO_WEAKEN_REPAIR
  n->fate = f;
  keep_gaps (f, n);
#else
  attach (f, n, NULL);
  tree_insert (d, n);
#endif
  return 0;
}

uint64_t
kept_upto (struct disk *d)
{
  return d->kept_seq;
}

void
kept_flushed (struct fate *f, uint64_t upto)
{
  struct kept *n;

  if (f->failed)
    return;
  while ((n = f->first) != NULL && n->seq <= upto) {
    tree_remove (f->disk, n);
    free_kept (n);
  }
  pthread_cond_broadcast (&f->disk->changed);
}

void
kept_fail (struct fate *f)
{
  if (f->failed)
    return;
  f->failed = 1;
  atomic_fetch_add (&f->disk->orphans, f->nr_kept);
}

void
kept_drop (struct fate *f)
{
  kept_flushed (f, UINT64_MAX);
}

int
kept_over_share (struct fate *f)
{
  /* From half the bound on, so that the other half takes the writes
   * that come while the flush is out.
   */
  int64_t half = settings.repair_memory / 2;
  int n = atomic_load (&keeping);

  return half > 0 && !f->failed && atomic_load (&total) > half &&
    f->kept_bytes * (n > 0 ? n : 1) >= half;
}

int
kept_full (uint64_t count)
{
  int64_t limit = settings.repair_memory;

  return limit > 0 && atomic_load (&total) + (int64_t) count > limit;
}

int
kept_orphans (struct disk *d)
{
  return atomic_load (&d->orphans) > 0;
}

/* ---- The repair */

/* One kept write a repair looks at, and what became of it. */
struct piece {
  struct kept *n;
  enum { UNSEEN, ON_SERVER, WRITTEN, REFUSED } what;
  int errnum;
};

/* The first orphan from offset on (lock held). */
static struct kept *
orphan_from (struct disk *d, uint64_t offset)
{
  struct kept *n;

  while ((n = first_from (d, offset)) != NULL && !n->fate->failed)
    offset = n->end;
  return n;
}

/* The orphans of [start, end), in order, into p (lock held). */
static int
pieces_of (struct disk *d, uint64_t start, uint64_t end, struct piece *p)
{
  struct kept *n;
  int k = 0;

  for (n = orphan_from (d, start); n && n->offset < end && k < REPAIR_PIECES;
       n = orphan_from (d, n->end))
    p[k++] = (struct piece) { .n = n };
  return k;
}

static int
is_zero (const unsigned char *p, uint64_t len)
{
  return len == 0 || (p[0] == 0 && memcmp (p, p + 1, len - 1) == 0);
}

/* Check and write again the pieces of [start, end) over e.  Returns 0,
 * or REPAIR_CONN_FAILED with *why saying how (lock not held).
 */
static int
repair_batch (struct fate *f, struct engine *e, uint64_t start, uint64_t end,
              struct piece *p, int k, unsigned char *buf, char **why)
{
  struct engine_request req = {
    .op = ENGINE_PREAD, .buf = buf, .count = end - start, .offset = start,
  };
  struct engine_result res;
  int i, have, outcome;

  outcome = engine_command (e, &req, &res);
  if (outcome == ENGINE_CONN_FAILED) {
    *why = res.msg;
    return REPAIR_CONN_FAILED;
  }
  free (res.msg);
  have = outcome == ENGINE_OK;  /* else write every piece again */
  for (i = 0; i < k; ++i) {
    struct kept *n = p[i].n;
    const unsigned char *on_server = buf + (n->offset - start);
    uint64_t len = n->end - n->offset;

    if (have && (n->blob ? memcmp (on_server, n->blob->bytes + n->blob_off, len) == 0
                 : is_zero (on_server, len))) {
      p[i].what = ON_SERVER;
      continue;
    }
    req = (struct engine_request) {
      .op = n->blob ? ENGINE_PWRITE : ENGINE_ZERO, .count = len,
      .offset = n->offset, .flags = n->flags,
      .buf = n->blob ? n->blob->bytes + n->blob_off : NULL,
    };
    outcome = engine_command (e, &req, &res);
    if (outcome == ENGINE_CONN_FAILED) {
      *why = res.msg;
      if (res.doubt == ENGINE_IN_DOUBT) {
        /* A doubt like any other write's, though the repair itself
         * ignores doubts: what it writes is older than any over it.
         */
        pthread_mutex_lock (&f->disk->lock);
        doubt_add (f, 0, req.offset, req.count);
        pthread_mutex_unlock (&f->disk->lock);
      }
      return REPAIR_CONN_FAILED;
    }
    free (res.msg);
    p[i].what = outcome == ENGINE_OK ? WRITTEN : REFUSED;
    p[i].errnum = res.errnum;
  }
  return 0;
}

/* What a batch found (lock held): the pieces checked or written again
 * become f's, with a new number, so that f's next flush covers them;
 * those the server refused are lost.
 */
static void
settle (struct fate *f, struct piece *p, int k, int *lost, int *checked,
        uint64_t *bytes, int *refused)
{
  struct disk *d = f->disk;
  int i;

  for (i = 0; i < k; ++i) {
    struct kept *n = p[i].n;

    switch (p[i].what) {
    case UNSEEN:
      continue;
    case WRITTEN:
      ++*lost;
      *bytes += n->end - n->offset;
      /* fallthrough */
    case ON_SERVER:
      ++*checked;
      detach (n);
      n->seq = ++d->kept_seq;
      attach (f, n, NULL);
      break;
    case REFUSED:
      ++*refused;
      {
        char *msg;

        if (asprintf (&msg, "repair: the server refused to write bytes %"
                      PRIu64 "-%" PRIu64 " again (%s): the write that "
                      "was acknowledged there is lost, and the flushes of "
                      "its client fail from now on", n->offset, n->end - 1,
                      strerror (p[i].errnum)) >= 0) {
          host_error (msg);
          free (msg);
        }
      }
      atomic_store (&n->owner->lost, 1);
      if (atomic_load (&n->owner->refs) == 1)   /* its client has gone */
        atomic_fetch_add (&d->losses, 1);
      tree_remove (d, n);
      free_kept (n);
      break;
    }
  }
}

int
kept_repair (struct fate *f, struct engine *e, int64_t deadline_ms, char **msg)
{
  struct disk *d = f->disk;
  struct piece p[REPAIR_PIECES];
  struct sending s;
  struct kept *n;
  unsigned char *buf = NULL;
  uint64_t start, end, bytes = 0, buf_size = 0;
  int k, r = REPAIR_DONE, lost = 0, checked = 0, refused = 0, pass;

  *msg = NULL;
  pthread_mutex_lock (&d->lock);
  while (d->repairing) {
    if (deadline_ms >= 0 && engine_now_ms () >= deadline_ms) {
      pthread_mutex_unlock (&d->lock);
      *msg = strdup ("another server connection's repair of the writes "
                     "the server may have lost did not end in time");
      return REPAIR_FAILED;
    }
    disk_wait (d, deadline_ms);
  }
  if (f->failed) {
    pthread_mutex_unlock (&d->lock);
    return REPAIR_CONN_FAILED;
  }
  d->repairing = 1;
  /* A fate failing meanwhile makes more orphans: go round again. */
  for (pass = 0; r == REPAIR_DONE && atomic_load (&d->orphans) > 0 && pass < 4;
       ++pass) {
    for (start = 0; r == REPAIR_DONE && (n = orphan_from (d, start)) != NULL;
         start = end) {
      /* A run of orphans that follow each other. */
      start = n->offset;
      end = n->end;
      while ((n = first_from (d, end)) != NULL && n->offset == end &&
             n->fate->failed && n->end - start <= REPAIR_BATCH)
        end = n->end;
      s = (struct sending) { .id = (uintptr_t) &s, .offset = start,
                             .end = end };
      if (sending_add (d, &s, deadline_ms) == -1) {
        *msg = strdup ("the writes the server may have lost could not be "
                       "checked in time: a write over them did not end");
        r = REPAIR_FAILED;
        break;
      }
      /* Writes that were being sent may have taken over some. */
      k = pieces_of (d, start, end, p);
      if (k == REPAIR_PIECES)
        end = p[k - 1].n->end;  /* the rest of the run next time */
      pthread_mutex_unlock (&d->lock);
      if (k > 0) {
        uint64_t from = p[0].n->offset, to = p[k - 1].n->end;

        if (to - from > buf_size) {
          free (buf);
          buf_size = to - from;
          if ((buf = malloc (buf_size)) == NULL) {
            buf_size = 0;
            r = REPAIR_FAILED;
          }
        }
        if (buf)
          r = repair_batch (f, e, from, to, p, k, buf, msg);
      }
      pthread_mutex_lock (&d->lock);
      settle (f, p, k, &lost, &checked, &bytes, &refused);
      if (r == REPAIR_FAILED && *msg == NULL)
        *msg = strdup ("out of memory checking the writes the server may "
                       "have lost");
      sending_end (d, &s);
      if (r == REPAIR_FAILED && *msg == NULL)
        *msg = strdup ("out of memory checking the writes the server may "
                       "have lost");
    }
  }
  d->repairing = 0;
  pthread_cond_broadcast (&d->changed);
  pthread_mutex_unlock (&d->lock);
  free (buf);
  if (lost > 0) {
    char *m;

    if (asprintf (&m, "repair: the server had lost %d of %d unflushed "
                  "writes (%" PRIu64 " bytes); written again",
                  lost, checked, bytes) >= 0) {
      host_error (m);
      free (m);
    }
  }
  else if (checked > 0) {
    char *m;

    if (asprintf (&m, "repair: checked %d unflushed writes: the server "
                  "had them all", checked) >= 0) {
      host_debug (m);
      free (m);
    }
  }
  return r;
}
