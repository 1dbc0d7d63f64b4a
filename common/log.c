#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/error.h>
#include <uv.h>

/* Read by every event-loop thread, set by a reload on the main one. */
static _Atomic int log_max = LOG_INFO;
static _Atomic bool log_json_format;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

void log_setup(enum log_level level, bool json)
{
	atomic_store_explicit(&log_max, (int)level, memory_order_relaxed);
	atomic_store_explicit(&log_json_format, json, memory_order_relaxed);
}

bool log_enabled(enum log_level level)
{
	return (int)level <= atomic_load_explicit(&log_max,
	    memory_order_relaxed);
}

int log_level_parse(const char *text, enum log_level *out)
{
	for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++) {
		if (strcmp(text, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

/* Append raw bytes, keeping room for the line's end. */
static void put(struct log_line *l, const char *s, size_t n)
{
	const size_t reserve = 32;	/* for " truncated=true" / "}\n" */
	if (l->cut)
		return;
	if (l->len + n + reserve > sizeof l->buf) {
		n = sizeof l->buf - reserve - l->len;
		l->cut = true;
	}
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

static void puts_raw(struct log_line *l, const char *s)
{
	put(l, s, strlen(s));
}

static bool needs_quotes(const char *s)
{
	if (*s == '\0')
		return true;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f)
			return true;
	}
	return false;
}

/* A quoted, escaped string: valid JSON and valid logfmt. */
static void put_quoted(struct log_line *l, const char *s)
{
	put(l, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char esc[8];
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			put(l, esc, 2);
		} else if (c == '\n') {
			put(l, "\\n", 2);
		} else if (c == '\t') {
			put(l, "\\t", 2);
		} else if (c < 0x20 || c == 0x7f) {
			snprintf(esc, sizeof esc, "\\u%04x", c);
			put(l, esc, 6);
		} else {
			put(l, (const char *)&c, 1);
		}
	}
	put(l, "\"", 1);
}

static void put_key(struct log_line *l, const char *key)
{
	if (l->json) {
		put(l, ",\"", 2);
		puts_raw(l, key);
		put(l, "\":", 2);
	} else {
		put(l, " ", 1);
		puts_raw(l, key);
		put(l, "=", 1);
	}
}

void log_begin(struct log_line *l, enum log_level level, const char *event)
{
	l->len = 0;
	l->cut = false;
	l->on = log_enabled(level);
	l->json = atomic_load_explicit(&log_json_format, memory_order_relaxed);
	if (!l->on)
		return;

	struct timespec ts;
	struct tm tm;
	char when[48];
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(when + n, sizeof when - n, ".%03ldZ", ts.tv_nsec / 1000000);

	if (l->json) {
		puts_raw(l, "{\"ts\":\"");
		puts_raw(l, when);
		puts_raw(l, "\",\"level\":\"");
		puts_raw(l, level_names[level]);
		puts_raw(l, "\",\"event\":");
		put_quoted(l, event);
	} else {
		puts_raw(l, "ts=");
		puts_raw(l, when);
		puts_raw(l, " level=");
		puts_raw(l, level_names[level]);
		puts_raw(l, " event=");
		puts_raw(l, event);
	}
}

void log_str(struct log_line *l, const char *key, const char *value)
{
	if (!l->on)
		return;
	if (value == NULL)
		value = "";
	put_key(l, key);
	if (l->json || needs_quotes(value))
		put_quoted(l, value);
	else
		puts_raw(l, value);
}

void log_u64(struct log_line *l, const char *key, uint64_t value)
{
	char num[24];
	if (!l->on)
		return;
	put_key(l, key);
	snprintf(num, sizeof num, "%llu", (unsigned long long)value);
	puts_raw(l, num);
}

void log_i64(struct log_line *l, const char *key, int64_t value)
{
	char num[24];
	if (!l->on)
		return;
	put_key(l, key);
	snprintf(num, sizeof num, "%lld", (long long)value);
	puts_raw(l, num);
}

void log_bool(struct log_line *l, const char *key, bool value)
{
	if (!l->on)
		return;
	put_key(l, key);
	puts_raw(l, value ? "true" : "false");
}

static void log_vfmt(struct log_line *l, const char *key, const char *fmt, va_list ap)
{
	char text[1024];
	vsnprintf(text, sizeof text, fmt, ap);
	log_str(l, key, text);
}

void log_fmt(struct log_line *l, const char *key, const char *fmt, ...)
{
	va_list ap;
	if (!l->on)
		return;
	va_start(ap, fmt);
	log_vfmt(l, key, fmt, ap);
	va_end(ap);
}

void log_end(struct log_line *l)
{
	if (!l->on)
		return;
	bool cut = l->cut;
	l->cut = false;	/* the reserve is ours now */
	if (cut) {
		if (l->json)
			puts_raw(l, ",\"truncated\":true");
		else
			puts_raw(l, " truncated=true");
	}
	if (l->json)
		put(l, "}", 1);
	put(l, "\n", 1);

	const char *p = l->buf;
	size_t left = l->len;
	while (left > 0) {
		ssize_t w = write(STDERR_FILENO, p, left);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		p += w;
		left -= (size_t)w;
	}
}

void log_msg(enum log_level level, const char *event, const char *fmt, ...)
{
	struct log_line l;
	va_list ap;
	log_begin(&l, level, event);
	if (!l.on)
		return;
	va_start(ap, fmt);
	log_vfmt(&l, "msg", fmt, ap);
	va_end(ap);
	log_end(&l);
}

const char *log_uverr(int err)
{
	return uv_strerror(err);
}

const char *log_tlserr(int err, char *buf, size_t len)
{
	char text[160];
	mbedtls_strerror(err, text, sizeof text);
	snprintf(buf, len, "%s (-0x%04x)", text, (unsigned)(err < 0 ? -err : err));
	return buf;
}
