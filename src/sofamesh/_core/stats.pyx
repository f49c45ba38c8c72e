# Counters, gauges and histograms for the hot path; see stats.pxd for the contract.

# Envoy's default histogram buckets (milliseconds).
DEFAULT_BOUNDS = (0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
                  5000.0, 10000.0, 30000.0, 60000.0, 300000.0, 600000.0, 1800000.0,
                  3600000.0)


cdef class Counter:
    def __cinit__(self, str name):
        self.name = name
        self.value = 0
        self.used = False

    def __repr__(self):
        return f"Counter({self.name!r}, {self.value})"


cdef class Gauge:
    def __cinit__(self, str name):
        self.name = name
        self.value = 0
        self.used = False

    def __repr__(self):
        return f"Gauge({self.name!r}, {self.value})"


# DEFAULT_BOUNDS as C doubles, shared by every histogram (PERF(benchmarks/xds_scale.py):
# 152 bytes less per histogram, two per cluster)
cdef double _BOUNDS[19]
for _i, _b in enumerate(DEFAULT_BOUNDS):
    _BOUNDS[_i] = _b


cdef class Histogram:
    def __cinit__(self, str name):
        cdef int i
        self.name = name
        self.bounds = DEFAULT_BOUNDS
        self.nbounds = len(DEFAULT_BOUNDS)
        for i in range(20):
            self.counts[i] = 0
        self.count = 0
        self.sum = 0.0
        self.used = False

    cdef void record(self, double v) noexcept:
        cdef int i = 0
        while i < self.nbounds and v > _BOUNDS[i]:
            i += 1
        self.counts[i] += 1
        self.count += 1
        self.sum += v
        self.used = True

    def add(self, double v):
        """Records one sample (milliseconds)."""
        self.record(v)

    def bucket_counts(self):
        """Per-bucket (non-cumulative) counts, len(bounds) + 1 entries, the last for +Inf."""
        return [self.counts[i] for i in range(self.nbounds + 1)]

    def quantile(self, double q):
        """An estimate of quantile q (0..1) by linear interpolation inside the bucket."""
        if self.count == 0:
            return None
        cdef double target = q * self.count
        cdef double seen = 0
        cdef double lo = 0.0
        cdef int i
        for i in range(self.nbounds + 1):
            if self.counts[i] and seen + self.counts[i] >= target:
                hi = _BOUNDS[i] if i < self.nbounds else lo * 2 or 1.0
                return lo + (hi - lo) * ((target - seen) / self.counts[i])
            seen += self.counts[i]
            if i < self.nbounds:
                lo = _BOUNDS[i]
        return lo

    def reset(self):
        cdef int i
        for i in range(20):
            self.counts[i] = 0
        self.count = 0
        self.sum = 0.0


class StatGroup:
    """The stats of one object (a cluster), made without names: `c`, `g` and `h` hold the
    Counter, Gauge and Histogram objects in the order of the `counters`, `gauges` and
    `histograms` name tuples (shared by every group of a kind). Their full names,
    `prefix + name`, exist only while a Store is read.

    PERF(benchmarks/xds_scale.py): a cluster has ~35 stats; named and indexed one by one
    they cost ~7.7 KB per cluster (the name string and the Store's dict entry weigh more
    than the counter), 77 MB at 10,000 clusters. As a group: ~2.5 KB."""

    __slots__ = ("counters", "gauges", "histograms", "c", "g", "h")

    def __init__(self, tuple counters, tuple gauges, tuple histograms):
        self.counters = counters
        self.gauges = gauges
        self.histograms = histograms
        self.c = tuple([Counter.__new__(Counter, None) for _ in counters])
        self.g = tuple([Gauge.__new__(Gauge, None) for _ in gauges])
        self.h = tuple([Histogram.__new__(Histogram, None) for _ in histograms])


# Groups of each Store: id(store) -> {prefix: [StatGroup, ...]} (kept here so the Store's
# layout, which other modules cimport, stays as it is).
cdef dict _GROUPS = {}
# Text readouts of each Store (Envoy's TextReadout: a string, e.g. control_plane.identifier):
# id(store) -> {name: value}; set from Python per config change, never on the hot path.
cdef dict _TEXTS = {}
# Prefixes (up to the last ".") of stats each Store made by name: id(store) -> set[str];
# group() adopts such stats, and looks for them only under these prefixes.
cdef dict _NAMED = {}


cdef void _note_named(Store store, str name) except *:
    """Records every prefix of `name` ending in "." (see _NAMED)."""
    prefixes = _NAMED.get(id(store))
    if prefixes is None:
        prefixes = _NAMED[id(store)] = set()
    cdef Py_ssize_t i = name.find(".")
    while i >= 0:
        prefixes.add(name[:i + 1])
        i = name.find(".", i + 1)


cdef object _grouped(Store store, str name, int kind):
    """The stat `name` held by a group of `store` (kind 0 counter, 1 gauge, 2 histogram)."""
    groups = _GROUPS.get(id(store))
    if not groups:
        return None
    cdef Py_ssize_t i = name.rfind(".")
    if i < 0:
        return None
    entries = groups.get(name[:i + 1])
    if entries is None:
        return None
    attr = name[i + 1:]
    for grp in entries:
        names = grp.counters if kind == 0 else grp.gauges if kind == 1 else grp.histograms
        if attr in names:
            objs = grp.c if kind == 0 else grp.g if kind == 1 else grp.h
            return objs[names.index(attr)]
    return None


cdef class Store:
    """All stats of one process, by full Envoy-style name."""

    def __cinit__(self):
        self._counters = {}
        self._gauges = {}
        self._histograms = {}

    def __dealloc__(self):
        _GROUPS.pop(id(self), None)
        _TEXTS.pop(id(self), None)
        _NAMED.pop(id(self), None)

    def text_readout(self, str name, str value=None):
        """Envoy's text readout `name`: made empty on first use; set to `value` if given.
        Returns its value."""
        texts = _TEXTS.setdefault(id(self), {})
        if value is not None:
            texts[name] = value
        return texts.setdefault(name, "")

    def text_readouts(self):
        """{name: value} of every text readout."""
        return dict(_TEXTS.get(id(self), {}))

    cpdef Counter counter(self, str name):
        c = self._counters.get(name)
        if c is None:
            c = _grouped(self, name, 0)
            if c is None:
                c = Counter(name)
                self._counters[name] = c
                _note_named(self, name)
        return <Counter>c

    cpdef Gauge gauge(self, str name):
        g = self._gauges.get(name)
        if g is None:
            g = _grouped(self, name, 1)
            if g is None:
                g = Gauge(name)
                self._gauges[name] = g
                _note_named(self, name)
        return <Gauge>g

    cpdef Histogram histogram(self, str name):
        h = self._histograms.get(name)
        if h is None:
            h = _grouped(self, name, 2)
            if h is None:
                h = Histogram(name)
                self._histograms[name] = h
                _note_named(self, name)
        return <Histogram>h

    def group(self, str prefix, tuple counters=(), tuple gauges=(), tuple histograms=()):
        """The StatGroup of stats named `prefix + name` for these names, made on first use
        (stats already made by name are adopted: one object per name, as ever); the same
        group on every later call, so an object rebuilt under one prefix keeps counting."""
        groups = _GROUPS.get(id(self))
        if groups is None:
            groups = _GROUPS[id(self)] = {}
        entries = groups.get(prefix)
        if entries is None:  # (no empty dict and list made per call just in case)
            entries = groups[prefix] = []
        for grp in entries:
            if grp.counters == counters and grp.gauges == gauges and (
                    grp.histograms == histograms):
                return grp
        grp = StatGroup(counters, gauges, histograms)
        # PERF(benchmarks/xds_scale.py): looking every name up was a third of a cluster's
        # construction; nothing to adopt unless a stat was made by name under the prefix
        if prefix not in _NAMED.get(id(self), ()):
            entries.append(grp)
            return grp
        for names, table, objs in ((counters, self._counters, grp.c),
                                   (gauges, self._gauges, grp.g),
                                   (histograms, self._histograms, grp.h)):
            if any(prefix + n in table for n in names):
                objs = list(objs)
                for i, n in enumerate(names):
                    objs[i] = table.pop(prefix + n, objs[i])
                if table is self._counters:
                    grp.c = tuple(objs)
                elif table is self._gauges:
                    grp.g = tuple(objs)
                else:
                    grp.h = tuple(objs)
        entries.append(grp)
        return grp

    def _named(self, int kind):
        """name -> stat, grouped ones included (named for this call)."""
        table = self._counters if kind == 0 else self._gauges if kind == 1 else self._histograms
        out = dict(table)
        for prefix, entries in _GROUPS.get(id(self), {}).items():
            for grp in entries:
                names = grp.counters if kind == 0 else grp.gauges if kind == 1 else grp.histograms
                objs = grp.c if kind == 0 else grp.g if kind == 1 else grp.h
                for n, o in zip(names, objs):
                    out[prefix + n] = o
        return out

    def counters(self):
        return self._named(0)

    def gauges(self):
        return self._named(1)

    def histograms(self):
        return self._named(2)

    def reset_counters(self):
        cdef Counter c
        for c in self._counters.values():
            c.value = 0
        for entries in _GROUPS.get(id(self), {}).values():
            for grp in entries:
                for c in grp.c:
                    c.value = 0

    def snapshot(self):
        """A plain-data copy: {"counters": {name: int}, "gauges": {name: int},
        "histograms": {name: {"counts": [...], "sum": float, "count": int}},
        "used": set of names}. Worker processes send this to the admin process."""
        cdef Counter c
        cdef Gauge g
        cdef Histogram h
        used = set()
        counters = {}
        for c in self._counters.values():
            counters[c.name] = c.value
            if c.used:
                used.add(c.name)
        gauges = {}
        for g in self._gauges.values():
            gauges[g.name] = g.value
            if g.used:
                used.add(g.name)
        hists = {}
        for h in self._histograms.values():
            hists[h.name] = {"counts": h.bucket_counts(), "sum": h.sum, "count": h.count}
            if h.used:
                used.add(h.name)
        for prefix, entries in _GROUPS.get(id(self), {}).items():
            for grp in entries:
                for n, c in zip(grp.counters, grp.c):
                    name = prefix + n
                    counters[name] = c.value
                    if c.used:
                        used.add(name)
                for n, g in zip(grp.gauges, grp.g):
                    name = prefix + n
                    gauges[name] = g.value
                    if g.used:
                        used.add(name)
                for n, h in zip(grp.histograms, grp.h):
                    name = prefix + n
                    hists[name] = {"counts": h.bucket_counts(), "sum": h.sum, "count": h.count}
                    if h.used:
                        used.add(name)
        return {
            "counters": counters,
            "gauges": gauges,
            "histograms": hists,
            "text_readouts": dict(_TEXTS.get(id(self), {})),
            "used": used,
        }
