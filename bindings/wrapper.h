/* The kernel ABI ringfence binds: the io_uring UAPI header. */
#include <linux/io_uring.h>
