/* Server-side CPU of one TLS handshake inside a TLS library, nothing else: a client and a
 * server SSL in one thread, joined by memory BIOs; only the server's calls are timed
 * (CLOCK_THREAD_CPUTIME_ID). Builds against OpenSSL's or BoringSSL's headers alike.
 *   handshake CERT KEY {1.2|1.3} N
 * prints: <library version>\t<version>\t<server us per handshake> */
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char buf[65536];

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int move(BIO *from, BIO *to) {
    int n = BIO_read(from, buf, sizeof buf);
    if (n > 0) BIO_write(to, buf, n);
    return n > 0;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s CERT KEY 1.2|1.3 N\n", argv[0]);
        return 2;
    }
    int tls12 = strcmp(argv[3], "1.2") == 0, n = atoi(argv[4]);
    SSL_CTX *sctx = SSL_CTX_new(TLS_method()), *cctx = SSL_CTX_new(TLS_method());
    if (SSL_CTX_use_certificate_chain_file(sctx, argv[1]) != 1 ||
        SSL_CTX_use_PrivateKey_file(sctx, argv[2], SSL_FILETYPE_PEM) != 1) {
        fprintf(stderr, "cannot load %s / %s\n", argv[1], argv[2]);
        return 1;
    }
    /* Envoy's default groups; OpenSSL 3.5+ would otherwise pick a post-quantum hybrid. */
    SSL_CTX_set1_curves_list(sctx, "X25519:P-256");
    SSL_CTX_set1_curves_list(cctx, "X25519:P-256");
    if (tls12) SSL_CTX_set_max_proto_version(sctx, TLS1_2_VERSION);
    double spent = 0;
    for (int i = 0; i < n; i++) {
        double t = cpu_now();
        SSL *s = SSL_new(sctx);
        BIO *s_in = BIO_new(BIO_s_mem()), *s_out = BIO_new(BIO_s_mem());
        SSL_set_bio(s, s_in, s_out);
        SSL_set_accept_state(s);
        spent += cpu_now() - t;
        SSL *c = SSL_new(cctx);
        BIO *c_in = BIO_new(BIO_s_mem()), *c_out = BIO_new(BIO_s_mem());
        SSL_set_bio(c, c_in, c_out);
        SSL_set_connect_state(c);
        int c_done = 0, s_done = 0, rounds = 0;
        while (!(c_done && s_done)) {
            if (++rounds > 20) {
                fprintf(stderr, "handshake did not finish\n");
                return 1;
            }
            if (!c_done) c_done = SSL_do_handshake(c) == 1;
            int moved = move(c_out, s_in);
            if (!s_done || moved) {
                t = cpu_now();
                s_done = SSL_do_handshake(s) == 1;
                spent += cpu_now() - t;
            }
            move(s_out, c_in);
        }
        SSL_read(c, buf, 1); /* the client takes the session tickets */
        t = cpu_now();
        SSL_free(s);
        spent += cpu_now() - t;
        SSL_free(c);
    }
    printf("%s\t%s\t%.1f\n", OpenSSL_version(0), tls12 ? "1.2" : "1.3", spent / n * 1e6);
    return 0;
}
