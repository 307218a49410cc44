"""Server certificate checking for secured sessions.

asyncua does not validate the peer certificate unless a validator is installed (protocols.md §4). We
install one that checks validity dates and the application URI (asyncua's CertificateValidator), then
trust: the certificate must be one of `trusted_certs` or chain to a certificate in `trust_dir`, and must
not be revoked by a CRL in `crl_dir`. The trust list is reloaded on every connect, so dropping a
certificate into trust_dir takes effect at the next reconnect attempt without a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies, uacrypto
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

from drivers.opcua.spec import OpcUaSecurity, SecurityMode, SecurityPolicy

if TYPE_CHECKING:
    from cryptography import x509

POLICY_CLASS: dict[SecurityPolicy, type[security_policies.SecurityPolicy]] = {
    SecurityPolicy.BASIC256SHA256: security_policies.SecurityPolicyBasic256Sha256,
}

MESSAGE_MODE: dict[SecurityMode, ua.MessageSecurityMode] = {
    SecurityMode.SIGN: ua.MessageSecurityMode.Sign,
    SecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}

# Key usage bits are not checked: asyncua requires non-repudiation as well, which many real servers'
# certificates lack, and OPC UA Part 6 does not demand it.
_BASIC_CHECKS = (
    CertificateValidatorOptions.TIME_RANGE
    | CertificateValidatorOptions.URI
    | CertificateValidatorOptions.PEER_SERVER
)


class ServerCertificateCheck:
    """A CertificateValidatorMethod: raises ServiceError(Bad...) when the server must not be trusted."""

    def __init__(self, trust_store: TrustStore | None, pinned_der: frozenset[bytes]) -> None:
        self._store = trust_store
        self._pinned = pinned_der
        self._basic = CertificateValidator(_BASIC_CHECKS)

    async def __call__(self, cert: x509.Certificate, app_description: ua.ApplicationDescription) -> None:
        await self._basic.validate(cert, app_description)
        trusted = uacrypto.der_from_x509(cert) in self._pinned or (
            self._store is not None and self._store.is_trusted(cert)
        )
        if not trusted:
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)
        if self._store is not None and self._store.is_revoked(cert):
            raise ServiceError(ua.StatusCodes.BadCertificateRevoked)


async def build_server_certificate_check(security: OpcUaSecurity) -> ServerCertificateCheck:
    pinned = frozenset(
        [uacrypto.der_from_x509(await uacrypto.load_certificate(path)) for path in security.trusted_certs]
    )
    store: TrustStore | None = None
    if security.trust_dir or security.crl_dir:
        store = TrustStore(
            [Path(security.trust_dir)] if security.trust_dir else [],
            [Path(security.crl_dir)] if security.crl_dir else [],
        )
        try:
            await store.load_trust()
        except ValueError:
            pass  # an empty trust directory: nothing is trusted through it (is_trusted() says False)
        await store.load_crl()
    return ServerCertificateCheck(store, pinned)
