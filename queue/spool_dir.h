/*
 * spool_dir: what the spool's modules share about the directory (README: The
 * spool): file modes, name suffixes, and the helpers both the job source
 * (spool.c) and the worker-free operations (spool_dir.c) use. Internal to
 * queue/spool*.c; everyone else uses queue/spool.h.
 */
#ifndef DROVER_SPOOL_DIR_H
#define DROVER_SPOOL_DIR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

#define SPOOL_DIR_MODE 0770
#define SPOOL_TMP_STALE_S 3600        /* a producer's file in tmp/ is garbage after this long */
#define SPOOL_TMP_NEW_S 10            /* an empty, lockable outcome file younger than this may be mid-creation */
#define SPOOL_FILE_MODE 0640
#define SPOOL_MIN_FREE_BYTES (16 * 1024) /* less free space than this is a fault: outcomes would not fit */
#define ATTEMPT_MARK ";a="
#define JSON_SUFFIX ".json"
#define OUTCOME_SUFFIX ".outcome"
#define SPARE_SUFFIX ".spare"
#define SPOOL_OUTCOME_ID_MAX 160      /* bytes of the id kept in an outcome file name */

/* Attempts recorded in name (its ";a=N" suffix), and the length of the name without it. */
int spool_name_split(const char *name, size_t *base_len);
/* The id of a job whose payload has none: its file name without the attempt mark and ".json" (malloc'd). */
char *spool_id_from_name(const char *name, size_t base_len);
/* A name unique on this host among our own files: "<ms>-<pid>-<counter><suffix>". */
void spool_unique_name(char *buf, size_t len, pid_t pid, const char *suffix);
bool spool_has_suffix(const char *name, const char *suffix);
/* True when fd is still the file at path (the name was not taken over meanwhile); *st is fd's. */
bool spool_fd_is_path(int fd, const char *path, struct stat *st);
/* rename(2) that never replaces a file (RENAME_NOREPLACE): 0 or -1/errno. */
int spool_move_noreplace(const char *from, const char *to);
/* Who should own the files written into dir: NULL unless root writes into someone else's spool. */
const struct stat *spool_foreign_owner(uid_t euid, const char *dir, struct stat *st);
/* The five directories exist (created when create) and are usable: 0, or -1 and err. */
int spool_check_dirs(const char *dir, bool create, char *err, size_t errlen);
/* Enough free space and inodes for outcomes: 0, or -1 and err. */
int spool_check_space(const char *dir, uid_t euid, char *err, size_t errlen);
/* Removes what dead writers left in tmp/. */
void spool_sweep_tmp(const char *dir);
/* NULL when payload is a JSON object with an acceptable "id" (then *id_out, malloc'd or NULL), else why not. */
const char *spool_payload_verdict(const char *payload, size_t len, char **id_out);
/* Moves every dead claim of processing/ back to incoming/: the number moved, or -1. */
int spool_reclaim_dead(const char *processing, const char *incoming);

#endif
