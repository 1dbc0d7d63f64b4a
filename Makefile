# upseal: make builds build/upseal-{client,server,certs}.
#   make SAN=1         AddressSanitizer + UBSan build, into build-asan/
#   make MBEDTLS_PREFIX=/opt/mbedtls-3.6   build against another mbedTLS
#   make check         install what is missing, build, run every test
#   make demo          install what is missing, run a client/server pair

CC      ?= cc
SAN     ?= 0
ifeq ($(SAN),1)
BUILD   ?= build-asan
SANFLAGS = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
OPT      = -O1
else
BUILD   ?= build
SANFLAGS =
OPT      = -O2
endif

CPPFLAGS += -D_GNU_SOURCE
CFLAGS   ?= $(OPT) -g
CFLAGS   += -std=gnu11 -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wno-format-nonliteral \
            -Wstrict-prototypes -Wmissing-prototypes -fstack-protector-strong -pthread $(SANFLAGS)
LDFLAGS  += -pthread $(SANFLAGS)
ifdef MBEDTLS_PREFIX
CPPFLAGS += -I$(MBEDTLS_PREFIX)/include
LDFLAGS  += -L$(MBEDTLS_PREFIX)/lib -Wl,-rpath,$(MBEDTLS_PREFIX)/lib
endif
LDLIBS   += -lmbedtls -lmbedx509 -lmbedcrypto -luv -linih

# ---- the layers of common/ (docs/ARCHITECTURE.md) -----------------------------
# Each layer is a static archive and may include only its own headers and
# those of the layers below it: a file is compiled with exactly those
# folders on its include path, so an include that reaches up does not build.
#   lib     text forms, logging, pins, randomness, config, counters, compat
#   tls     mbedTLS configuration per tunnel, tickets, the pool's preamble
#   proxy   the connection, its two directions, the pool, the listeners
#   daemon  process life, workers, reload, the status endpoint, the audit
LAYERS     := lib tls proxy daemon
INC_lib    := -Icommon/lib
INC_tls    := $(INC_lib) -Icommon/tls
INC_proxy  := $(INC_tls) -Icommon/proxy
INC_daemon := $(INC_proxy) -Icommon/daemon
INC_ALL    := $(INC_daemon)

$(foreach l,$(LAYERS),$(eval SRC_$(l) := $(wildcard common/$(l)/*.c)))
$(foreach l,$(LAYERS),$(eval OBJ_$(l) := $(SRC_$(l):%.c=$(BUILD)/%.o)))
$(foreach l,$(LAYERS),$(eval $(BUILD)/common/$(l)/%.o: LAYER_INC := $(INC_$(l))))
COMMON_SRC := $(foreach l,$(LAYERS),$(SRC_$(l)))
# Linked top layer first, so each archive finds what it uses further on.
ARCHIVES   := $(foreach l,daemon proxy tls lib,$(BUILD)/common/$(l).a)

CERTS_SRC  := $(wildcard certs/*.c)
CERTS_OBJ  := $(CERTS_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC   := $(wildcard tests/unit/*.c)
UNIT_OBJ   := $(UNIT_SRC:%.c=$(BUILD)/%.o)
# The daemons and the tests see every layer; upseal-certs only lib.
$(BUILD)/client/%.o $(BUILD)/server/%.o $(BUILD)/tests/%.o: LAYER_INC := $(INC_ALL)
$(BUILD)/certs/%.o: LAYER_INC := $(INC_lib)

BINS := $(BUILD)/upseal-client $(BUILD)/upseal-server $(BUILD)/upseal-certs

all: $(BINS) $(BUILD)/unit-tests

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(LAYER_INC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/common/%.a:
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

$(foreach l,$(LAYERS),$(eval $(BUILD)/common/$(l).a: $(OBJ_$(l))))

$(BUILD)/upseal-client: $(BUILD)/client/main.o $(ARCHIVES)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/upseal-server: $(BUILD)/server/main.o $(ARCHIVES)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/upseal-certs: $(CERTS_OBJ) $(BUILD)/common/lib.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The unit tests make their TLS identities at run time with certs/x509gen.
$(BUILD)/unit-tests: $(UNIT_OBJ) $(BUILD)/certs/x509gen.o $(ARCHIVES)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

check:
	./tests/check.sh

demo:
	./examples/demo.sh

clean:
	rm -rf build build-asan

.PHONY: all check demo clean

-include $(shell find $(BUILD) -name '*.d' -type f 2>/dev/null)

# ---- fuzzing (tests/fuzz) ---------------------------------------------------
#   make fuzz [FUZZ_SECONDS=60]   build the libFuzzer targets into build-fuzz/
#                                 (clang, ASan+UBSan) and run each that long
#   make fuzz-build               only build them
FUZZ_CC      ?= clang
FUZZ_BUILD   := build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := config pin pinfile addr tls_server pool proxy
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
                -fno-omit-frame-pointer
FUZZ_CFLAGS  := -O1 -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter $(FUZZ_SAN)
FUZZ_LIB_OBJ := $(COMMON_SRC:%.c=$(FUZZ_BUILD)/obj/%.o) $(FUZZ_BUILD)/obj/certs/x509gen.o
FUZZ_BINS    := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)

$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS) $(INC_ALL) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB_OBJ) $(wildcard tests/fuzz/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS) $(INC_ALL) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ \
	    $(filter-out %.h,$^) \
	    $(LDFLAGS) $(LDLIBS)

fuzz-build: $(FUZZ_BINS)

.SECONDARY: $(FUZZ_LIB_OBJ)

fuzz: fuzz-build
	FUZZ_NO_BUILD=1 ./tests/fuzz/run.sh $(FUZZ_SECONDS)

.PHONY: fuzz fuzz-build
-include $(shell find $(FUZZ_BUILD) -name '*.d' -type f 2>/dev/null)
# ---- end of fuzzing ---------------------------------------------------------

# ---- install ----------------------------------------------------------------
#   make install [PREFIX=/usr/local] [DESTDIR=]     (make uninstall undoes it)
# The two daemons go to $(PREFIX)/sbin (system services, man section 8), the
# operator's tool upseal-certs to $(PREFIX)/bin (section 1). Man pages to
# $(PREFIX)/share/man, the examples (ini files, nginx snippet, compose, k8s,
# systemd units with ExecStart pointed at $(SBINDIR)) to
# $(PREFIX)/share/doc/upseal/examples. The Dockerfile installs with
# DESTDIR=/out PREFIX=/usr. Nothing is built as root: run make first.
PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR  ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
MANDIR  ?= $(PREFIX)/share/man
DOCDIR  ?= $(PREFIX)/share/doc/upseal
INSTALL ?= install

EXAMPLE_FILES := $(wildcard examples/*.ini examples/*.conf examples/*.yaml)
EXAMPLE_K8S   := $(wildcard examples/k8s/*.yaml)
EXAMPLE_UNITS := $(wildcard examples/systemd/*.service)

install: $(BINS)
	$(INSTALL) -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) \
	    $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 \
	    $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(DOCDIR)/examples/k8s \
	    $(DESTDIR)$(DOCDIR)/examples/systemd
	$(INSTALL) -m 0755 $(BUILD)/upseal-client $(BUILD)/upseal-server \
	    $(DESTDIR)$(SBINDIR)/
	$(INSTALL) -m 0755 $(BUILD)/upseal-certs $(DESTDIR)$(BINDIR)/
	$(INSTALL) -m 0644 docs/man/upseal-certs.1 $(DESTDIR)$(MANDIR)/man1/
	$(INSTALL) -m 0644 docs/man/upseal.ini.5 $(DESTDIR)$(MANDIR)/man5/
	$(INSTALL) -m 0644 docs/man/upseal-client.8 docs/man/upseal-server.8 \
	    $(DESTDIR)$(MANDIR)/man8/
	$(INSTALL) -m 0644 $(EXAMPLE_FILES) $(DESTDIR)$(DOCDIR)/examples/
	$(if $(EXAMPLE_K8S),$(INSTALL) -m 0644 $(EXAMPLE_K8S) \
	    $(DESTDIR)$(DOCDIR)/examples/k8s/)
	$(foreach u,$(EXAMPLE_UNITS),sed 's|/usr/local/sbin/|$(SBINDIR)/|g' \
	    $(u) >$(DESTDIR)$(DOCDIR)/examples/systemd/$(notdir $(u)) && \
	    chmod 0644 $(DESTDIR)$(DOCDIR)/examples/systemd/$(notdir $(u)) &&) true

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/upseal-client $(DESTDIR)$(SBINDIR)/upseal-server \
	    $(DESTDIR)$(BINDIR)/upseal-certs \
	    $(DESTDIR)$(MANDIR)/man1/upseal-certs.1 \
	    $(DESTDIR)$(MANDIR)/man5/upseal.ini.5 \
	    $(DESTDIR)$(MANDIR)/man8/upseal-client.8 \
	    $(DESTDIR)$(MANDIR)/man8/upseal-server.8
	rm -rf $(DESTDIR)$(DOCDIR)

.PHONY: install uninstall
# ---- end of install ---------------------------------------------------------

# ---- bench (bench/) ---------------------------------------------------------
#   make bench        build the load tool, backend and AEAD micro-benchmark into
#                     $(BUILD)/bench/ and run bench/run.py: upseal against
#                     stunnel4, haproxy and nginx (stream), interleaved rounds,
#                     one markdown table of medians. Not part of `make check`.
#   env: BENCH_ROUNDS (3), BENCH_BULK_MIB (1024), BENCH_IDLE (2000),
#        BENCH_CONTENDERS (comma list), BENCH_QUICK=1 (smoke run),
#        BENCH_PINFILE=no (skip the 10,000-pin file's ratios, bench/pinfile.py),
#        BENCH_JSON (file for the raw rows), BENCH_PERF=1 (perf of upseal bulk;
#        BENCH_PERF_DATA=FILE keeps perf.data). Results: docs/PERFORMANCE.md
BENCH_BIN := $(BUILD)/bench/load $(BUILD)/bench/backend $(BUILD)/bench/aead

$(BUILD)/bench/load: bench/load.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $<

$(BUILD)/bench/backend: bench/backend.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $<

$(BUILD)/bench/aead: bench/aead.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< -lmbedcrypto

bench-build: $(BINS) $(BENCH_BIN)

bench: bench-build
	python3 bench/run.py --build $(BUILD)

.PHONY: bench bench-build
# ---- end of bench -----------------------------------------------------------

# ---- docs -------------------------------------------------------------------
#   make docs     render every docs/*.dot (Graphviz) into the .svg beside it
#                 (the connection's state diagram in docs/ARCHITECTURE.md);
#                 tests/docs.sh checks that the committed .svg is up to date.
DOT_SRC := $(wildcard docs/*.dot)

docs: $(DOT_SRC:.dot=.svg)

docs/%.svg: docs/%.dot
	dot -Tsvg -o $@ $<

.PHONY: docs
# ---- end of docs ------------------------------------------------------------
