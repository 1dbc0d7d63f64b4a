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

CPPFLAGS += -D_GNU_SOURCE -Icommon
CFLAGS   ?= $(OPT) -g
CFLAGS   += -std=gnu11 -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wno-format-nonliteral \
            -Wstrict-prototypes -Wmissing-prototypes -fstack-protector-strong $(SANFLAGS)
LDFLAGS  += $(SANFLAGS)
ifdef MBEDTLS_PREFIX
CPPFLAGS += -I$(MBEDTLS_PREFIX)/include
LDFLAGS  += -L$(MBEDTLS_PREFIX)/lib -Wl,-rpath,$(MBEDTLS_PREFIX)/lib
endif
LDLIBS   += -lmbedtls -lmbedx509 -lmbedcrypto -luv -linih

COMMON_SRC := $(wildcard common/*.c)
COMMON_OBJ := $(COMMON_SRC:%.c=$(BUILD)/%.o)
CERTS_SRC  := $(wildcard certs/*.c)
CERTS_OBJ  := $(CERTS_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC   := $(wildcard tests/unit/*.c)
UNIT_OBJ   := $(UNIT_SRC:%.c=$(BUILD)/%.o)

BINS := $(BUILD)/upseal-client $(BUILD)/upseal-server $(BUILD)/upseal-certs

all: $(BINS) $(BUILD)/unit-tests

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/upseal-client: $(BUILD)/client/main.o $(COMMON_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/upseal-server: $(BUILD)/server/main.o $(COMMON_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/upseal-certs: $(CERTS_OBJ) $(COMMON_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/unit-tests: $(UNIT_OBJ) $(COMMON_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

check:
	./tests/check.sh

demo:
	./examples/demo.sh

clean:
	rm -rf build build-asan

.PHONY: all check demo clean

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
