/*
 * log: leveled, structured log lines to stderr, as logfmt text
 * (`ts=... level=info event=conn_end tunnel=app id=7 ...`) or as one JSON
 * object per line. The only place where libuv and mbedTLS error codes are
 * turned into words.
 *
 * A line is built field by field into a fixed buffer on the caller's stack
 * and written with one write(2), so lines from different threads never
 * interleave. Over-long lines are cut and end with `truncated=true`.
 */
#ifndef UPSEAL_LOG_H
#define UPSEAL_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

#define LOG_LINE_MAX 2048

struct log_line {
	char buf[LOG_LINE_MAX];
	size_t len;
	bool on;	/* false: the level is filtered out, every call is a no-op */
	bool json;
	bool cut;	/* full: later fields are dropped */
	bool open_quote;	/* a quoted value was cut before its end */
	size_t field_at, value_at;	/* where the last field and its value start */
};

/* Set the level and format for the whole process (default: info, text). */
void log_setup(enum log_level level, bool json);

/* True if lines of this level are written. */
bool log_enabled(enum log_level level);

/* Parse "error" | "warn" | "info" | "debug"; 0 or -1. */
int log_level_parse(const char *text, enum log_level *out);

/*
 * Start a line with the timestamp, the level and the event name (a short
 * snake_case word such as "listening" or "conn_end"), then add fields, then
 * log_end() writes it. Field keys are snake_case words; values are quoted
 * and escaped as the format needs.
 */
void log_begin(struct log_line *l, enum log_level level, const char *event);
void log_str(struct log_line *l, const char *key, const char *value);
void log_u64(struct log_line *l, const char *key, uint64_t value);
void log_i64(struct log_line *l, const char *key, int64_t value);
void log_bool(struct log_line *l, const char *key, bool value);
/* A printf-formatted string value. */
void log_fmt(struct log_line *l, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void log_end(struct log_line *l);

/*
 * One-call form for simple messages: event plus a free-text msg field.
 */
void log_msg(enum log_level level, const char *event, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Words for a libuv error code (a static string). */
const char *log_uverr(int err);

/*
 * Words for an mbedTLS error code, written into buf and returned
 * ("X509 - Certificate verification failed (-0x2700)").
 */
const char *log_tlserr(int err, char *buf, size_t len);

#endif
