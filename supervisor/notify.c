/*
 * notify: the sd_notify(3) datagram protocol, spoken directly. One datagram
 * of newline-separated VAR=value assignments per call, sent to the socket
 * named by NOTIFY_SOCKET (a path, or "@name" for the abstract namespace).
 * Notifications are advisory: a failure is logged once and never stops
 * drover, and a manager that stops reading cannot stall the event loop for
 * longer than the send timeout.
 */
#include "supervisor/notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "shared/log.h"

#define NOTIFY_SEND_TIMEOUT_MS 2000
#define NOTIFY_STATUS_MAX 1024

static int notify_fd = -1;
static struct sockaddr_un notify_addr;
static socklen_t notify_addrlen;
static int notify_failures;

/* Fills notify_addr from a NOTIFY_SOCKET value. Returns 0, or -1 when it is not usable. */
static int parse_notify_address(const char *value)
{
	size_t len = strlen(value);

	if (len < 2 || (value[0] != '/' && value[0] != '@') || len >= sizeof(notify_addr.sun_path))
		return -1;
	memset(&notify_addr, 0, sizeof(notify_addr));
	notify_addr.sun_family = AF_UNIX;
	memcpy(notify_addr.sun_path, value, len);
	if (value[0] == '@') {
		/* Abstract names are not NUL-terminated: the length is the address. */
		notify_addr.sun_path[0] = '\0';
		notify_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	} else {
		notify_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
	}
	return 0;
}

static int open_notify_socket(void)
{
	struct timeval timeout = {
		.tv_sec = NOTIFY_SEND_TIMEOUT_MS / 1000,
		.tv_usec = (NOTIFY_SEND_TIMEOUT_MS % 1000) * 1000,
	};
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout)) < 0) {
		int saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

static void notify_close(void)
{
	if (notify_fd >= 0)
		close(notify_fd);
	notify_fd = -1;
}

int notify_init(char *err, size_t errlen)
{
	const char *value = getenv("NOTIFY_SOCKET");
	char address[sizeof(notify_addr.sun_path) + 1];

	notify_close();
	if (value == NULL || value[0] == '\0') {
		unsetenv("NOTIFY_SOCKET");
		return 0;
	}
	/* Copy before unsetenv: the value's storage belongs to the environment. */
	snprintf(address, sizeof(address), "%s", value);
	unsetenv("NOTIFY_SOCKET");

	if (parse_notify_address(address) < 0) {
		snprintf(err, errlen, "NOTIFY_SOCKET \"%s\" is not a socket path or @abstract name", address);
		return -1;
	}
	notify_fd = open_notify_socket();
	if (notify_fd < 0) {
		snprintf(err, errlen, "notify socket: %s", strerror(errno));
		return -1;
	}
	notify_failures = 0;
	return 0;
}

/* Sends one datagram; logs the first failure, then only at debug level. */
static void notify_send(const char *message)
{
	size_t len = strlen(message);
	ssize_t sent;

	if (notify_fd < 0)
		return;
	do {
		sent = sendto(notify_fd, message, len, MSG_NOSIGNAL, (const struct sockaddr *)&notify_addr,
		              notify_addrlen);
	} while (sent < 0 && errno == EINTR);

	if (sent == (ssize_t)len)
		return;
	if (sent >= 0)
		errno = EMSGSIZE; /* a datagram is all or nothing; a short send is a failure */
	if (notify_failures++ == 0)
		log_warn("notify service manager");
	else
		log_debug("notify service manager: %s", strerror(errno));
}

/* Copies a status line, turning newlines into spaces: a newline would start a new assignment. */
static void sanitize_status(char *dst, size_t dstlen, const char *status)
{
	size_t i;

	snprintf(dst, dstlen, "%s", status);
	for (i = 0; dst[i] != '\0'; i++) {
		if (dst[i] == '\n' || dst[i] == '\r')
			dst[i] = ' ';
	}
}

void notify_ready(const char *status)
{
	char clean[NOTIFY_STATUS_MAX];
	char message[NOTIFY_STATUS_MAX + 64];

	if (notify_fd < 0)
		return;
	if (status != NULL) {
		sanitize_status(clean, sizeof(clean), status);
		snprintf(message, sizeof(message), "READY=1\nMAINPID=%ld\nSTATUS=%s", (long)getpid(), clean);
	} else {
		snprintf(message, sizeof(message), "READY=1\nMAINPID=%ld", (long)getpid());
	}
	notify_send(message);
}

void notify_status(const char *status)
{
	char clean[NOTIFY_STATUS_MAX];
	char message[NOTIFY_STATUS_MAX + 16];

	if (notify_fd < 0 || status == NULL)
		return;
	sanitize_status(clean, sizeof(clean), status);
	snprintf(message, sizeof(message), "STATUS=%s", clean);
	notify_send(message);
}

void notify_reloading(void)
{
	struct timespec now;
	char message[64];

	if (notify_fd < 0)
		return;
	/* systemd >= 253 (Type=notify-reload) wants the reload's start time; older ones ignore it. */
	if (clock_gettime(CLOCK_MONOTONIC, &now) == 0)
		snprintf(message, sizeof(message), "RELOADING=1\nMONOTONIC_USEC=%llu",
		         (unsigned long long)now.tv_sec * 1000000ULL + (unsigned long long)now.tv_nsec / 1000ULL);
	else
		snprintf(message, sizeof(message), "RELOADING=1");
	notify_send(message);
}

void notify_stopping(void)
{
	notify_send("STOPPING=1");
}
