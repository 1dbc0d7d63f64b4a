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

/*
 * Room kept at the end of the buffer for what log_end adds to a cut line:
 * a closing quote, " truncated=true" or ,"truncated":true, "}" and "\n".
 */
#define LINE_END_RESERVE 32

/* Append raw bytes, cutting them when the line is full. */
static void put(struct log_line *l, const char *s, size_t n)
{
	if (l->cut)
		return;
	if (l->len + n + LINE_END_RESERVE > sizeof l->buf) {
		n = sizeof l->buf - LINE_END_RESERVE - l->len;
		l->cut = true;
	}
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

/* True if n more bytes fit; if not, the line is cut from here on. */
static bool fits(struct log_line *l, size_t n)
{
	if (!l->cut && l->len + n + LINE_END_RESERVE > sizeof l->buf)
		l->cut = true;
	return !l->cut;
}

/* Append all n bytes or, when they do not fit, none (the line is cut). */
static void put_whole(struct log_line *l, const char *s, size_t n)
{
	if (fits(l, n))
		put(l, s, n);
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

/* Bytes of the UTF-8 sequence at s, 1 for a byte that starts none. */
static size_t utf8_len(const unsigned char *s)
{
	size_t n = s[0] >= 0xf8 ? 1 : s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 :
	    s[0] >= 0xc0 ? 2 : 1;
	for (size_t i = 1; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return i;
	return n;
}

/*
 * A quoted, escaped string: valid JSON and valid logfmt. A cut falls
 * between characters, never inside an escape or a UTF-8 sequence; the
 * string it leaves open is closed by log_end.
 */
static void put_quoted(struct log_line *l, const char *s)
{
	put_whole(l, "\"", 1);
	if (l->cut)
		return;
	l->open_quote = true;
	while (*s) {
		unsigned char c = (unsigned char)*s;
		char esc[8];
		size_t n = 1;
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			put_whole(l, esc, 2);
		} else if (c == '\n') {
			put_whole(l, "\\n", 2);
		} else if (c == '\t') {
			put_whole(l, "\\t", 2);
		} else if (c < 0x20 || c == 0x7f) {
			snprintf(esc, sizeof esc, "\\u%04x", c);
			put_whole(l, esc, 6);
		} else {
			n = utf8_len((const unsigned char *)s);
			put_whole(l, s, n);
		}
		if (l->cut)
			return;
		s += n;
	}
	put_whole(l, "\"", 1);
	if (!l->cut)
		l->open_quote = false;
}

/*
 * The key of a field, whole or not at all. Where the field starts and
 * where its value starts are kept, so that log_end can take back a key
 * whose value did not fit.
 */
static void put_key(struct log_line *l, const char *key)
{
	l->field_at = l->len;
	if (fits(l, strlen(key) + (l->json ? 4 : 2))) {
		put(l, l->json ? ",\"" : " ", l->json ? 2 : 1);
		puts_raw(l, key);
		put(l, l->json ? "\":" : "=", l->json ? 2 : 1);
	}
	l->value_at = l->len;
}

void log_begin(struct log_line *l, enum log_level level, const char *event)
{
	l->len = 0;
	l->cut = false;
	l->open_quote = false;
	l->field_at = l->value_at = 0;
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
	put_whole(l, num, strlen(num));
}

void log_i64(struct log_line *l, const char *key, int64_t value)
{
	char num[24];
	if (!l->on)
		return;
	put_key(l, key);
	snprintf(num, sizeof num, "%lld", (long long)value);
	put_whole(l, num, strlen(num));
}

void log_bool(struct log_line *l, const char *key, bool value)
{
	if (!l->on)
		return;
	put_key(l, key);
	put_whole(l, value ? "true" : "false", value ? 4 : 5);
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
	/* The end is written in the reserve, past where put stops. */
	char *end = l->buf + l->len;
	if (l->cut) {
		if (l->open_quote)
			*end++ = '"';
		else if (l->len == l->value_at)
			end = l->buf + l->field_at;	/* a key without its value */
		const char *mark = l->json ? ",\"truncated\":true" :
		    " truncated=true";
		memcpy(end, mark, strlen(mark));
		end += strlen(mark);
	}
	if (l->json)
		*end++ = '}';
	*end++ = '\n';
	l->len = (size_t)(end - l->buf);

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
